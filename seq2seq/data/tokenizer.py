"""sentencepiece models: training in memory, encoding/decoding, (de)serialisation as plain bytes.

The special ids are fixed for the whole project and asserted every time a model is loaded, because
sentencepiece's defaults differ (``unk=0, bos=1, eos=2, pad=-1``) and a model trained with them would
silently break padding (``nn.Embedding(padding_idx=-1)`` is the last real piece).

Sequences produced here are *bare* pieces: no BOS/EOS. `seq2seq.data.batching` adds them where the model needs
them (source: ``pieces + [EOS]``; target: ``[BOS] + pieces`` / ``pieces + [EOS]``).
"""

from __future__ import annotations

import io
import os
import random
import re
import threading
from itertools import chain
from typing import Any, Iterable, Sequence

import sentencepiece as spm

from seq2seq.config import TokenizerConfig

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
PAD_PIECE, UNK_PIECE, BOS_PIECE, EOS_PIECE = "<pad>", "<unk>", "<s>", "</s>"
SPECIAL_PIECES = {PAD_ID: PAD_PIECE, UNK_ID: UNK_PIECE, BOS_ID: BOS_PIECE, EOS_ID: EOS_PIECE}
BYTE_PIECES = 256  # byte_fallback adds one piece per byte value

# Batch encoding runs in sentencepiece's own thread pool (the GIL is released).
ENCODE_THREADS = max(1, min(8, os.cpu_count() or 1))
TRAIN_THREADS = 2

# sentencepiece's sampling RNG is seeded from one global seed: `sample_*` set it and encode with
# num_threads=1 (more threads would share the sentences out nondeterministically and start from the same
# state), so within a process a sample is a function of (lines, seed). Not across processes: sentencepiece
# 0.2.x gives other draws for the same seed in another process (see seq2seq/data/subword_sampling.py). The lock
# keeps two samplers from changing the global seed under each other.
_SAMPLING_LOCK = threading.Lock()


_TOO_HIGH = re.compile(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)")
_TOO_SMALL = re.compile(r"Vocabulary size is smaller than required_chars\. (\d+) vs (\d+)")


class TokenizerError(ValueError):
    """A sentencepiece model that cannot be trained or used; the message says which setting to change."""


# -------------------------------------------------------------------------------------------- training


def train_sentencepiece(lines: Iterable[str], cfg: TokenizerConfig, label: str = "") -> bytes:
    """Train a sentencepiece model on `lines` (cleaned text, one sentence each); return the model bytes.

    `lines`: a list (sampled down to `cfg.max_sentences` here), or an iterator that the caller has sampled
    and knows to hold text: it is read once, streamed into sentencepiece, never held as Python strings.
    Everything stays in memory (no temporary files). Ids 0-3 are PAD/UNK/BOS/EOS. `label` (e.g.
    "joint de+en" or "source de") only makes error messages more specific.
    Raises `TokenizerError` naming `data.tokenizer.vocab_size` when the size does not fit the corpus.
    """
    if isinstance(lines, str):
        raise TypeError("train_sentencepiece expects a list of lines, not one string")
    what = f" ({label})" if label else ""
    if isinstance(lines, Sequence):
        if not any(line.strip() for line in lines):
            raise TokenizerError(f"cannot train sentencepiece{what}: no non-empty training lines")
        if 0 < cfg.max_sentences < len(lines):
            # Sample here rather than through sentencepiece's input_sentence_size, which refuses values
            # <= 100 and draws from its global RNG; this draw depends on the seed alone, order is kept.
            chosen = sorted(random.Random(cfg.seed).sample(range(len(lines)), cfg.max_sentences))
            lines = [lines[i] for i in chosen]
    # sentencepiece keeps its sampling RNG in global state; this is the only seed it exposes.
    spm.set_random_generator_seed(cfg.seed)
    options: dict[str, Any] = dict(
        model_type=cfg.model_type,
        vocab_size=cfg.vocab_size,
        character_coverage=cfg.character_coverage,
        byte_fallback=cfg.byte_fallback,
        pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
        pad_piece=PAD_PIECE, unk_piece=UNK_PIECE, bos_piece=BOS_PIECE, eos_piece=EOS_PIECE,
        num_threads=TRAIN_THREADS,
        minloglevel=2,  # errors only: its INFO log is pages long; failures raise anyway
    )
    writer = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=writer, **options)
    except RuntimeError as e:
        raise _training_error(str(e), cfg, what) from None
    return writer.getvalue()


def _training_error(message: str, cfg: TokenizerConfig, what: str) -> TokenizerError:
    """Turn sentencepiece's C++ check failures into advice naming our config keys."""
    key = "data.tokenizer.vocab_size"
    m = _TOO_HIGH.search(message)
    if m:
        limit = int(m.group(2))
        return TokenizerError(
            f"config key '{key}' is {cfg.vocab_size}, but sentencepiece{what} can build at most "
            f"{limit} pieces from this training text; set {key}<={limit} or train on more text"
        )
    m = _TOO_SMALL.search(message)
    if m:
        needed = int(m.group(2))
        if cfg.byte_fallback:
            chars = needed - BYTE_PIECES - len(SPECIAL_PIECES)
            parts = (f"{len(SPECIAL_PIECES)} special + {BYTE_PIECES} byte-fallback pieces + "
                     f"{chars} characters")
            alternatives = "data.tokenizer.byte_fallback=false, or a lower data.tokenizer.character_coverage"
        else:
            parts = f"{len(SPECIAL_PIECES)} special pieces + {needed - len(SPECIAL_PIECES)} characters"
            alternatives = "a lower data.tokenizer.character_coverage"
        return TokenizerError(
            f"config key '{key}' is {cfg.vocab_size}, but sentencepiece{what} needs at least {needed} "
            f"({parts}); set {key}>={needed}, or use {alternatives}"
        )
    return TokenizerError(f"sentencepiece training failed{what}: {message}")


# ------------------------------------------------------------------------------------------- tokenizer


def _load(model: bytes, side: str) -> spm.SentencePieceProcessor:
    if not isinstance(model, (bytes, bytearray)):
        raise TokenizerError(f"{side} model must be bytes, got {type(model).__name__}")
    try:
        sp = spm.SentencePieceProcessor(model_proto=bytes(model))
    except RuntimeError:
        raise TokenizerError(f"{side} model: not a valid sentencepiece model ({len(model)} bytes)") from None
    found = {i: sp.id_to_piece(i) if i < sp.get_piece_size() else None for i in SPECIAL_PIECES}
    declared = (sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id())
    if found != SPECIAL_PIECES or declared != (PAD_ID, UNK_ID, BOS_ID, EOS_ID):
        raise TokenizerError(
            f"{side} sentencepiece model has the wrong special pieces: ids 0-3 are "
            f"{[found[i] for i in SPECIAL_PIECES]} and pad/unk/bos/eos ids are {list(declared)}; "
            f"expected {list(SPECIAL_PIECES.values())} at ids 0-3 (train it with seq2seq's "
            "train_sentencepiece, which sets pad_id=0 unk_id=1 bos_id=2 eos_id=3)"
        )
    return sp


def _as_ids(seq: Iterable[int]) -> list[int]:
    """Accept lists, tuples, numpy arrays and tensors alike."""
    tolist = getattr(seq, "tolist", None)
    return [int(i) for i in (tolist() if tolist is not None else seq)]


class Tokenizer:
    """The source and target sentencepiece models of a language pair (one shared model when joint).

    Ids are plain ints; `encode_*` return bare pieces (no BOS/EOS). Picklable (DataLoader workers,
    ddp_spawn) through the model bytes.
    """

    def __init__(self, src_model: bytes, tgt_model: bytes):
        self._src_bytes = bytes(src_model)
        self._tgt_bytes = bytes(tgt_model)
        self.joint: bool = self._src_bytes == self._tgt_bytes
        self._src = _load(self._src_bytes, "source")
        self._tgt = self._src if self.joint else _load(self._tgt_bytes, "target")
        self.src_vocab_size: int = self._src.get_piece_size()
        self.tgt_vocab_size: int = self._tgt.get_piece_size()

    def __repr__(self) -> str:
        kind = "joint" if self.joint else "separate"
        return f"Tokenizer({kind}, src_vocab_size={self.src_vocab_size}, tgt_vocab_size={self.tgt_vocab_size})"

    # ---- encoding: list[str] (N lines) -> list[list[int]] (N bare piece-id lists)

    @staticmethod
    def _encode(sp: spm.SentencePieceProcessor, lines: Sequence[str]) -> list[list[int]]:
        if isinstance(lines, str):
            raise TypeError("encode expects a list of lines, not one string")
        lines = list(lines)
        if not lines:
            return []
        return sp.encode(lines, out_type=int, num_threads=ENCODE_THREADS)

    @staticmethod
    def _sample(sp: spm.SentencePieceProcessor, lines: Sequence[str], alpha: float, nbest: int,
                seed: int) -> list[list[int]]:
        if isinstance(lines, str):
            raise TypeError("sample expects a list of lines, not one string")
        lines = list(lines)
        if not lines:
            return []
        if not 0 <= seed < 2**32 - 1:  # 2**32 - 1 is sentencepiece's "no seed: use the OS entropy"
            raise ValueError(f"sampling seed must be in [0, 2**32 - 1), got {seed}")
        with _SAMPLING_LOCK:
            spm.set_random_generator_seed(seed)
            return sp.encode(lines, out_type=int, num_threads=1, enable_sampling=True, alpha=alpha,
                             nbest_size=nbest)

    def sample_src(self, lines: Sequence[str], alpha: float, nbest: int, seed: int) -> list[list[int]]:
        """One sampled segmentation per line (bpe: BPE-dropout with probability `alpha`; unigram: from
        the `nbest` best, or all when -1, with smoothing `alpha`); other seeds give other draws."""
        return self._sample(self._src, lines, alpha, nbest, seed)

    def sample_tgt(self, lines: Sequence[str], alpha: float, nbest: int, seed: int) -> list[list[int]]:
        return self._sample(self._tgt, lines, alpha, nbest, seed)

    def encode_src(self, lines: Sequence[str]) -> list[list[int]]:
        return self._encode(self._src, lines)

    def encode_tgt(self, lines: Sequence[str]) -> list[list[int]]:
        return self._encode(self._tgt, lines)

    def corpus_encoders(self) -> tuple["WordMemoEncoder", "WordMemoEncoder"]:
        """Encoders for whole corpora (source, target; one shared when joint): `encode_*`'s output, faster."""
        src = WordMemoEncoder(self._src)
        return src, src if self.joint else WordMemoEncoder(self._tgt)

    # ---- decoding: N id sequences (lists, arrays or tensors) -> N detokenized strings

    @staticmethod
    def _decode(sp: spm.SentencePieceProcessor, ids: Sequence[Iterable[int]], side: str) -> list[str]:
        size = sp.get_piece_size()
        drop = (PAD_ID, BOS_ID, EOS_ID)
        seqs = []
        for n, seq in enumerate(ids):
            seq = [i for i in _as_ids(seq) if i not in drop]
            bad = [i for i in seq if not 0 <= i < size]
            if bad:
                raise TokenizerError(f"decode: sequence {n} holds id {bad[0]}, outside the {side} "
                                     f"vocabulary (size {size})")
            seqs.append(seq)
        return sp.decode(seqs) if seqs else []

    def decode_src(self, ids: Sequence[Iterable[int]]) -> list[str]:
        return self._decode(self._src, ids, "source")

    def decode_tgt(self, ids: Sequence[Iterable[int]]) -> list[str]:
        return self._decode(self._tgt, ids, "target")

    # ---- pieces (for attention plots and debugging): one sequence -> its piece strings

    def src_pieces(self, ids: Iterable[int]) -> list[str]:
        return [self._src.id_to_piece(i) for i in _as_ids(ids)]

    def tgt_pieces(self, ids: Iterable[int]) -> list[str]:
        return [self._tgt.id_to_piece(i) for i in _as_ids(ids)]

    # ---- serialisation: plain bytes, safe for torch.load(weights_only=True)

    def state_dict(self) -> dict[str, bytes]:
        return {"src_model": self._src_bytes, "tgt_model": self._tgt_bytes}

    @classmethod
    def from_state_dict(cls, d: dict) -> "Tokenizer":
        missing = [k for k in ("src_model", "tgt_model") if k not in d]
        if missing:
            raise TokenizerError(f"tokenizer state lacks {', '.join(missing)} (has: {', '.join(map(str, d))})")
        return cls(d["src_model"], d["tgt_model"])

    def __getstate__(self) -> dict[str, bytes]:
        return self.state_dict()

    def __setstate__(self, state: dict[str, bytes]) -> None:
        self.__init__(state["src_model"], state["tgt_model"])


class WordMemoEncoder:
    """Encodes cleaned lines (words separated by single spaces) as `Tokenizer.encode_*` does, remembering
    each word's pieces: a corpus repeats its words (Zipf), so most of it is dictionary lookups, and
    sentencepiece sees each distinct word once instead of every sentence.

    Exact, not an approximation: sentencepiece splits the normalized text at its whitespace marks and
    no piece spans one (split_by_whitespace, on in every model we train), so a line's pieces are its
    words' pieces one after another. A word whose normalization is not one marked word (NFKC may turn a
    character into a space, or remove it) is never remembered: its line is encoded whole. At most
    `max_words` words are remembered (bounded memory); lines with others are encoded whole too.
    """

    def __init__(self, sp: spm.SentencePieceProcessor, max_words: int = 500_000):
        self.sp = sp
        self.max_words = max_words
        self.memo: dict[str, list[int]] = {}
        self.unsafe: set[str] = set()

    def _learn(self, words: list[str]) -> None:
        room = self.max_words - len(self.memo)
        if room <= 0:
            return
        words = [w for w in words if w not in self.unsafe][:room]
        if not words:
            return
        for word, ids, normal in zip(words, self.sp.encode(words, out_type=int, num_threads=ENCODE_THREADS),
                                     self.sp.normalize(words)):
            if normal.startswith("\u2581") and "\u2581" not in normal[1:] and len(normal) > 1:
                self.memo[word] = ids
            elif len(self.unsafe) < self.max_words:
                self.unsafe.add(word)

    def encode(self, lines: Sequence[str]) -> list[list[int]]:
        """N lines -> N lists of bare piece ids, equal to `sp.encode(lines)`."""
        memo = self.memo
        split = [line.split(" ") for line in lines]
        missing = {w for words in split for w in words if w not in memo}
        if missing:
            self._learn(sorted(missing))  # sorted: the same memo whatever the set's order
        out: list[list[int] | None] = []
        whole: list[int] = []  # lines with a word that is not remembered
        get, flatten = memo.get, chain.from_iterable
        for n, words in enumerate(split):
            pieces = list(map(get, words))
            if None in pieces:
                whole.append(n)
                out.append(None)
            else:
                out.append(list(flatten(pieces)))
        if whole:
            for n, ids in zip(whole, self.sp.encode([lines[n] for n in whole], out_type=int,
                                                    num_threads=ENCODE_THREADS)):
                out[n] = ids
        return out
