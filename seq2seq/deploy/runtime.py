"""Translate with an export folder (`seq2seq-export`): numpy + onnxruntime + sentencepiece, no torch.

This module is the reference for porting a translator to another language: it imports nothing from
the training side (what the two share is data: config.json, two ONNX graphs, two sentencepiece models;
docs/deploy.md describes them), and its searches are the torch searches of `seq2seq.decoding.search` written
plainly, so both give the same translations:

    state = encoder(src [B, S], src_lengths [B])                    # named tensors (config.json "state")
    log_probs [N, V], topk log-probs and ids [N, k], attention [N, S], new row state
        = step(prev_tokens [N], k, state)

Per-row state tensors ("hidden", "cell", "feed") follow their row when rows are reordered; per-source
ones ("keys", "values", "src_pad_mask") are kept once per sentence: in beam search the K consecutive
rows of a sentence share them.

Search rules (as in seq2seq/decoding/search.py). Sentence i may emit at most floor(max_len_a + max_len_b *
src_len_i) tokens (at least 1; src_len counts the EOS appended to the source; EOS counts as emitted).
A hypothesis's score is the float32 sum of its tokens' log-probabilities, EOS included. Greedy takes
the arg-max. Beam search (width K) takes, per sentence, the top 2K continuations of its K beams: EOS
candidates ranked within the first K are finalized, the first K others become the next beams; a
sentence stops once K hypotheses are finalized or at its maximum length (its live beams are then
finalized unfinished). Hypotheses are ranked by score / length ** length_penalty. PAD and BOS are
never emitted, nor EOS before `min_len` tokens (their log-probabilities count as -inf).

    from seq2seq.deploy.runtime import OnnxTranslator
    translator = OnnxTranslator("model-onnx/")
    print(translator.translate(["Ein Hund läuft."], beam_size=5)[0].text)
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import numpy as np
import sentencepiece as spm

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
EXTRA_HINT = 'pip install -e ".[onnx]"'

# Output text is made one line with the rule seq2seq.data.corpus.clean_text applies to input lines
# (tests/test_runtime.py checks that the two agree): whitespace-like controls become a space, other
# controls are dropped, whitespace runs collapse.
_SPACE_CONTROLS = re.compile("[\t\r\x0b\x0c\x1c-\x1f\x85\n]")
_DROP_CONTROLS = re.compile("[\x00-\x08\x0e-\x1b\x7f-\x84\x86-\x9f\ufeff]")


def one_line(text: str) -> str:
    return " ".join(_DROP_CONTROLS.sub("", _SPACE_CONTROLS.sub(" ", text.replace("\r\n", "\n"))).split())


class ExportFolderError(ValueError):
    """An export folder that cannot be used; the message names the file."""


@dataclass
class SearchSettings:
    """Search defaults from config.json; the translate call may override them."""

    beam_size: int = 1
    length_penalty: float = 1.0
    max_len_a: float = 10
    max_len_b: float = 1.5
    min_len: int = 0
    batch_tokens: int = 8192
    max_src_tokens: int = 250

    @classmethod
    def from_config(cls, search: dict) -> SearchSettings:
        """The settings this runtime applies out of config.json's "search" (which may hold more, such as
        the tuning grid of seq2seq-tune-search)."""
        return cls(**{k: v for k, v in search.items() if k in cls.__dataclass_fields__})


@dataclass
class Hypothesis:
    tokens: list[int]  # target ids without BOS / EOS
    score: float  # float32 sum of the token log-probabilities, EOS included
    finished: bool  # ended with EOS (False: cut at the maximum length)
    attention: np.ndarray | None = None  # [T, S_i]: one row per emitted token (EOS included)

    @property
    def length(self) -> int:
        return len(self.tokens) + int(self.finished)


class Candidate(NamedTuple):
    """One entry of an n-best list (the fields of seq2seq.decoding.output.Candidate)."""

    text: str
    score: float  # float32 sum of the token log-probabilities, EOS included
    normalized_score: float  # score / length ** length_penalty: what the list is ranked by


@dataclass
class Translation:
    """The result for one input line (the fields of seq2seq.decoding.translator.Translation)."""

    text: str
    score: float
    tokens: list[int]
    attention: np.ndarray | None = None
    src_tokens: list[int] = field(default_factory=list)
    nbest: list[Candidate] = field(default_factory=list)  # best first
    finished: bool = True

    @property
    def length(self) -> int:
        return len(self.tokens) + int(self.finished)


class Pieces:
    """The source and target sentencepiece models of the folder."""

    def __init__(self, src_path: Path, tgt_path: Path) -> None:
        self.src = spm.SentencePieceProcessor(model_file=str(src_path))
        self.tgt = spm.SentencePieceProcessor(model_file=str(tgt_path))

    def encode_src(self, lines: Sequence[str]) -> list[list[int]]:
        return self.src.encode(list(lines), out_type=int) if lines else []

    def decode_tgt(self, ids: Sequence[Sequence[int]]) -> list[str]:
        return self.tgt.decode([list(map(int, s)) for s in ids]) if ids else []

    def encode_tgt(self, lines: Sequence[str]) -> list[list[int]]:
        return self.tgt.encode(list(lines), out_type=int) if lines else []

    def src_pieces(self, ids: Sequence[int]) -> list[str]:
        return [self.src.id_to_piece(int(i)) for i in ids]

    def tgt_pieces(self, ids: Sequence[int]) -> list[str]:
        return [self.tgt.id_to_piece(int(i)) for i in ids]


class OnnxModel:
    """The two graphs of an export folder behind the step contract (numpy arrays in and out)."""

    def __init__(self, folder: Path, config: dict, threads: int = 0) -> None:
        try:
            import onnxruntime as ort  # the optional `onnx` extra: imported here to name it when missing
        except ImportError:
            raise ExportFolderError(f"onnxruntime is not installed; install the extra: {EXTRA_HINT}") from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # 0: onnxruntime decides
        options.inter_op_num_threads = 1
        graphs = config["graphs"]
        self.encoder, self.decoder = (self._session(ort, folder / graphs[name], options)
                                      for name in ("encoder", "decoder_step"))
        self.state = config["state"]  # [{"name", "per": "row" | "source", "axis"}, ...]
        self.step_outputs = graphs["step_outputs"]
        ids = config["special_ids"]
        self.pad_id, self.bos_id, self.eos_id = ids["pad"], ids["bos"], ids["eos"]
        self.vocab_size = config["vocab_size"]["target"]

    @staticmethod
    def _session(ort, path: Path, options):
        try:
            return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime's own exception types (invalid protobuf, bad graph)
            raise ExportFolderError(f"{path}: onnxruntime cannot load it ({e})") from None

    def init_state(self, src: np.ndarray, src_lengths: np.ndarray) -> dict[str, np.ndarray]:
        """src [B, S] int64 (PAD after each length), src_lengths [B] int64 -> the named state."""
        outputs = self.encoder.run(None, {"src": src, "src_lengths": src_lengths})
        return {s["name"]: value for s, value in zip(self.state, outputs)}

    def step(self, prev_tokens: np.ndarray, state: dict[str, np.ndarray],
             k: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, dict[str, np.ndarray]]:
        """prev_tokens [N] int64 -> log_probs [N, V] float32, the k best of each row (log-probs [N, k]
        and token ids [N, k], best first), attention [N, S] or None, the new state."""
        feeds = {"prev_tokens": prev_tokens, "k": np.array(min(k, self.vocab_size), dtype=np.int64), **state}
        outputs = dict(zip(self.step_outputs, self.decoder.run(None, feeds)))
        new_state = {name: outputs.get(f"new_{name}", value) for name, value in state.items()}
        return (outputs["log_probs"], outputs["topk_log_probs"], outputs["topk_ids"], outputs.get("attention"),
                new_state)

    def reorder(self, state: dict[str, np.ndarray], rows: np.ndarray,
                sources: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Per-row tensors take `rows`; per-source tensors take `sources` (None: they stay as they are)."""
        new = {}
        for s in self.state:
            value = state[s["name"]]
            if s["per"] == "row":
                value = np.take(value, rows, axis=s["axis"])
            elif sources is not None:
                value = np.take(value, sources, axis=s["axis"])
            new[s["name"]] = value
        return new


def max_lengths(src_lengths: np.ndarray, max_len_a: float, max_len_b: float) -> np.ndarray:
    """floor(a + b * source length), at least 1, per sentence."""
    return np.maximum(np.floor(max_len_a + max_len_b * src_lengths.astype(np.float64)), 1).astype(np.int64)


def forbidden(model: OnnxModel, t: int, min_len: int) -> list[int]:
    """The tokens step t must not emit: PAD and BOS, and EOS while t < min_len."""
    return [model.pad_id, model.bos_id] + ([model.eos_id] if t < min_len else [])


def greedy(model: OnnxModel, src: np.ndarray, src_lengths: np.ndarray, max_len_a: float,
           max_len_b: float, attention: bool = False, min_len: int = 0) -> list[Hypothesis]:
    """One hypothesis per sentence: the most likely token at every step."""
    batch = src.shape[0]
    limits = max_lengths(src_lengths, max_len_a, max_len_b)
    state = model.init_state(src, src_lengths)
    rows = np.arange(batch)  # sentence of each active row
    prev = np.full(batch, model.bos_id, dtype=np.int64)
    scores = np.zeros(batch, dtype=np.float32)
    tokens: list[list[int]] = [[] for _ in range(batch)]
    attention: list[list[np.ndarray]] = [[] for _ in range(batch)]
    results: list[Hypothesis | None] = [None] * batch
    for t in range(int(limits.max())):
        log_probs, _, _, attn, state = model.step(prev, state)
        cand = scores[:, None] + log_probs  # [n, V]: picked as beam search with one beam would
        cand[:, forbidden(model, t, min_len)] = -np.inf
        prev = cand.argmax(axis=1).astype(np.int64)  # [n]
        scores = cand[np.arange(len(rows)), prev]
        for j, b in enumerate(rows):
            tokens[b].append(int(prev[j]))
            if attention and attn is not None:
                attention[b].append(attn[j, : src_lengths[b]])
        ended = (prev == model.eos_id) | (t + 1 >= limits[rows])
        for j in np.flatnonzero(ended):
            b, eos = rows[j], bool(prev[j] == model.eos_id)
            results[b] = Hypothesis(tokens[b][:-1] if eos else tokens[b], float(scores[j]), eos,
                                    np.stack(attention[b]) if attention[b] else None)
        keep = np.flatnonzero(~ended)
        if keep.size == 0:
            break
        if keep.size < len(rows):  # finished sentences leave the batch
            state = model.reorder(state, keep, keep)
            rows, prev, scores = rows[keep], prev[keep], scores[keep]
    return results  # type: ignore[return-value]


def beam_search(model: OnnxModel, src: np.ndarray, src_lengths: np.ndarray, beam_size: int,
                length_penalty: float, max_len_a: float, max_len_b: float, nbest: int = 1,
                attention: bool = False, min_len: int = 0) -> list[list[Hypothesis]]:
    """Up to `nbest` hypotheses per sentence, best first (the rules are in the module doc)."""
    k, batch = beam_size, src.shape[0]
    limits = max_lengths(src_lengths, max_len_a, max_len_b)
    state = model.init_state(src, src_lengths)
    state = model.reorder(state, np.repeat(np.arange(batch), k))  # K rows per sentence, keys once
    sent = np.arange(batch)  # original sentence of each active sentence
    scores = np.full((batch, k), -np.inf, dtype=np.float32)
    scores[:, 0] = 0.0  # at the first step only beam 0 is live
    prev = np.full(batch * k, model.bos_id, dtype=np.int64)
    history = np.zeros((batch * k, 0), dtype=np.int64)  # tokens of each live beam
    attn_history = None  # [rows, t, S] when attention is asked for
    pool: list[list[tuple[float, Hypothesis]]] = [[] for _ in range(batch)]  # (rank key, hypothesis)
    rank = np.arange(2 * k)
    for t in range(int(limits.max())):
        n = len(sent)
        # A sentence's 2K best continuations are among the 2K best of each of its beams: the graph
        # returns those (TopK), so the search sorts K * 2K candidates per sentence, not K * V. Three
        # more per row, since up to three of them (PAD, BOS, EOS before min_len) are forbidden.
        _, row_lp, row_ids, attn, state = model.step(prev, state, 2 * k + 3)
        row_lp = np.where(np.isin(row_ids, forbidden(model, t, min_len)), np.float32(-np.inf), row_lp)
        per_row = row_lp.shape[1]
        cand = (scores[:, :, None] + row_lp.reshape(n, k, per_row)).reshape(n, k * per_row)
        top = np.argsort(-cand, axis=1, kind="stable")[:, : 2 * k]  # best first; ties: lower beam first
        top_s = np.take_along_axis(cand, top, axis=1)  # [n, 2K]
        beam, tok = top // per_row, np.take_along_axis(row_ids.reshape(n, -1), top, axis=1)
        is_eos = tok == model.eos_id
        act = np.argsort(rank + 2 * k * is_eos, axis=1, kind="stable")[:, :k]  # first K non-EOS
        parent_rows = np.arange(n)[:, None] * k + beam  # [n, 2K] row of each candidate's beam
        if attention and attn is not None:
            attn_history = (attn[:, None, :] if attn_history is None
                            else np.concatenate([attn_history, attn[:, None, :]], axis=1))
        last = t + 1 >= limits[sent]
        for i in range(n):
            for c in range(2 * k):
                if len(pool[sent[i]]) >= k or not np.isfinite(top_s[i, c]):
                    continue
                eos = bool(is_eos[i, c]) and c < k
                if eos or (last[i] and c in act[i]):
                    row = parent_rows[i, c]
                    words = history[row].tolist() + ([] if eos else [int(tok[i, c])])
                    att = (attn_history[row, :, : src_lengths[sent[i]]]
                           if attn_history is not None else None)
                    hyp = Hypothesis(words, float(top_s[i, c]), eos, att)
                    key = np.float32(top_s[i, c]) / np.power(np.float32(t + 1), np.float32(length_penalty))
                    pool[sent[i]].append((float(key), hyp))
        done = np.array([len(pool[s]) >= k for s in sent]) | last
        # advance the live beams: rows move only among the beams of their own sentence
        chosen = np.take_along_axis(parent_rows, act, axis=1).reshape(-1)  # [n*K]
        scores = np.take_along_axis(top_s, act, axis=1)
        prev = np.take_along_axis(tok, act, axis=1).reshape(-1).astype(np.int64)
        history = np.concatenate([history[chosen], prev[:, None]], axis=1)
        if attn_history is not None:
            attn_history = attn_history[chosen]
        keep = np.flatnonzero(~done)
        if keep.size == 0:
            break
        if keep.size < n:  # finished sentences leave the batch (their keys too)
            kept_rows = (keep[:, None] * k + np.arange(k)).reshape(-1)
            state = model.reorder(state, chosen[kept_rows], keep)
            sent, scores, prev, history = sent[keep], scores[keep], prev[kept_rows], history[kept_rows]
            if attn_history is not None:
                attn_history = attn_history[kept_rows]
        else:
            state = model.reorder(state, chosen)
    results = []
    for entries in pool:
        order = sorted(range(len(entries)), key=lambda j: -entries[j][0])  # stable: earlier first on ties
        results.append([entries[j][1] for j in order[:nbest]])
    return results


def score_reference(model: OnnxModel, src: np.ndarray, src_lengths: np.ndarray,
                    references: Sequence[Sequence[int]]) -> list[float]:
    """log P(reference + EOS | source) per sentence, by feeding the reference one token per step."""
    batch = src.shape[0]
    target = [list(r) + [model.eos_id] for r in references]
    state = model.init_state(src, src_lengths)
    prev = np.full(batch, model.bos_id, dtype=np.int64)
    total = np.zeros(batch, dtype=np.float32)
    for t in range(max(len(r) for r in target)):
        log_probs, _, _, _, state = model.step(prev, state)
        gold = np.array([r[t] if t < len(r) else model.pad_id for r in target], dtype=np.int64)
        if gold.max() >= log_probs.shape[1]:
            raise ValueError(f"reference ids must be < the target vocabulary size {log_probs.shape[1]}")
        live = np.array([t < len(r) for r in target])
        total = total + np.where(live, log_probs[np.arange(batch), gold], np.float32(0))
        prev = gold
    return total.tolist()


def token_budget_batches(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Indices sorted by length, grouped so that count x longest length <= budget (a longer sentence
    alone). The grouping of seq2seq.data.batching.token_budget_batches, so batches match the torch backend."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])  # stable
    batches, current, width = [], [], 0
    for i in order:
        new_width = max(width, lengths[i])
        if current and new_width * (len(current) + 1) > budget:
            batches.append(current)
            current, new_width = [], lengths[i]
        current.append(i)
        width = new_width
    return batches + ([current] if current else [])


def collate(seqs: Sequence[Sequence[int]], eos_id: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Bare source ids -> src [B, S] int64 (EOS appended, PAD after), src_lengths [B] int64."""
    lengths = np.array([len(s) + 1 for s in seqs], dtype=np.int64)
    src = np.full((len(seqs), int(lengths.max())), pad_id, dtype=np.int64)
    for i, s in enumerate(seqs):
        src[i, : len(s)] = s
        src[i, len(s)] = eos_id
    return src, lengths


class OnnxTranslator:
    """Lines in, `Translation`s out, in input order, with an export folder."""

    def __init__(self, folder: str | Path, threads: int = 0) -> None:
        folder = Path(folder)
        path = folder / "config.json"
        if not path.is_file():
            raise ExportFolderError(f"{folder} is not an export folder (no config.json); write one with "
                                "seq2seq-export --checkpoint best.ckpt --output-dir DIR")
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ExportFolderError(f"{path}: not valid JSON ({e})") from None
        if config.get("format_version") != FORMAT_VERSION:
            raise ExportFolderError(f"{path}: format version {config.get('format_version')}; this runtime reads "
                                f"version {FORMAT_VERSION}")
        for key in ("graphs", "state", "special_ids", "search", "sentencepiece"):
            if key not in config:
                raise ExportFolderError(f"{path}: key '{key}' is missing")
        for name in (*config["graphs"].values(), *config["sentencepiece"].values()):
            if isinstance(name, str) and not (folder / name).is_file():
                raise ExportFolderError(f"{folder / name} is missing (named in {path})")
        self.config = config
        try:
            self.cfg = SearchSettings.from_config(config["search"])
            self.model = OnnxModel(folder, config, threads)
            self.tokenizer = Pieces(folder / config["sentencepiece"]["source"],
                                    folder / config["sentencepiece"]["target"])
        except (KeyError, TypeError) as e:
            raise ExportFolderError(f"{path}: unusable ({type(e).__name__}: {e})") from None

    def _encode(self, lines: Sequence[str], first_line: int = 1) -> list[list[int]]:
        ids = self.tokenizer.encode_src(list(lines))
        limit = self.cfg.max_src_tokens - 1  # room for the EOS
        long = [i for i, s in enumerate(ids) if len(s) > limit]
        if long:
            log.warning("%d input line(s) longer than max_src_tokens=%d pieces were truncated (line %s)",
                        len(long), self.cfg.max_src_tokens, ", ".join(str(i + first_line) for i in long[:10]))
        return [s[:limit] for s in ids]

    def _groups(self, ids: list[list[int]], todo: list[int]) -> list[list[int]]:
        groups = token_budget_batches([len(ids[i]) + 1 for i in todo], self.cfg.batch_tokens)
        return [[todo[j] for j in g] for g in groups]

    def translate(self, lines: Sequence[str], nbest: int = 1, with_attention: bool = False,
                  progress: Callable[[int], None] | None = None, first_line: int = 1) -> list[Translation]:
        """Translate `lines` with the search settings in `self.cfg`; result i belongs to line i
        (numbered `first_line` + i in warnings).

        Beam search runs when beam_size > 1 or nbest > 1; an empty line gives an empty translation.
        """
        cfg = self.cfg
        if nbest > max(cfg.beam_size, 1):
            raise ValueError(f"nbest={nbest} needs a beam at least that wide (beam_size={cfg.beam_size})")
        ids = self._encode(lines, first_line)
        results = [Translation(text="", score=0.0, tokens=[], nbest=[Candidate("", 0.0, 0.0)]) for _ in lines]
        todo = [i for i, line in enumerate(lines) if line.strip()]
        if progress is not None and len(todo) < len(lines):
            progress(len(lines) - len(todo))
        for group in self._groups(ids, todo):
            src, src_lengths = collate([ids[i] for i in group], self.model.eos_id, self.model.pad_id)
            if cfg.beam_size == 1 and nbest == 1:
                hyps = [[h] for h in greedy(self.model, src, src_lengths, cfg.max_len_a, cfg.max_len_b,
                                             with_attention, cfg.min_len)]
            else:
                hyps = beam_search(self.model, src, src_lengths, cfg.beam_size, cfg.length_penalty,
                                   cfg.max_len_a, cfg.max_len_b, nbest, with_attention, cfg.min_len)
            texts = [one_line(t) for t in self.tokenizer.decode_tgt([h.tokens for row in hyps for h in row])]
            k = 0
            for i, row in zip(group, hyps):
                row_texts, k = texts[k: k + len(row)], k + len(row)
                best = row[0]
                results[i] = Translation(text=row_texts[0], score=best.score, tokens=best.tokens,
                                         attention=best.attention if with_attention else None,
                                         src_tokens=ids[i], finished=best.finished,
                                         nbest=[Candidate(text, h.score, h.score / max(h.length, 1) ** cfg.length_penalty)
                                                for text, h in zip(row_texts, row)])
            if progress is not None:
                progress(len(group))
        return results

    def score_references(self, src_lines: Sequence[str], ref_lines: Sequence[str],
                         first_line: int = 1) -> list[float]:
        """The model's log-likelihood of each reference given its source (EOS included)."""
        if len(src_lines) != len(ref_lines):
            raise ValueError(f"{len(src_lines)} source lines but {len(ref_lines)} references")
        ids, refs = self._encode(src_lines, first_line), self.tokenizer.encode_tgt(list(ref_lines))
        scores = [0.0] * len(src_lines)
        for group in self._groups(ids, list(range(len(src_lines)))):
            src, src_lengths = collate([ids[i] for i in group], self.model.eos_id, self.model.pad_id)
            for i, s in zip(group, score_reference(self.model, src, src_lengths, [refs[i] for i in group])):
                scores[i] = float(s)
        return scores
