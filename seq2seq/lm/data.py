"""Monolingual text for language models: read, validate, filter, tokenize, cache, batch.

`prepare_monolingual(cfg)` mirrors `seq2seq.data.cache.prepare_corpus` for one language:

1. locate the text: `data.train_files` / `valid_files` / `test_files` (plain or .gz, several files are
   concatenated), else Multi30k's `{split}.{lang}[.gz]` under `data.root` or a mirror (downloaded when
   allowed). With `train_files` and no `valid_files`, the last `valid_holdout` training lines validate.
   Every file is read by `corpus.read_lines`: strict UTF-8, errors naming the file and line;
2. drop empty training lines and those over `max_chars` characters, train sentencepiece on the rest
   (or take the target model of `tokenizer_from`, so that the LM can be fused with that translation
   model), drop lines over `max_tokens` pieces, and encode every split;
3. cache the result under `{cache_dir}/{corpus}.{lang}.lm.{key12}/`, the key hashing the input files'
   bytes and every setting that changes the output; a folder is written beside and renamed into place.

Validation and test lines are never filtered (their perplexity stays comparable). A sentence is
`[BOS] + pieces` in and `pieces + [EOS]` out; its word count (whitespace words + 1 for the end of the
sentence, as the EOS token counts) gives perplexity per word, comparable across vocabularies.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from seq2seq.checkpoint.format import PAYLOAD_KEY, read_checkpoint
from seq2seq.config import SAMPLING_KEYS, ConfigError, MonolingualDataConfig
from seq2seq.data.batching import _pad, lengths_to_mask
from seq2seq.data.corpus import (CorpusError, _candidates, _find_in, _search_folders, download_multi30k, file_sha256,
                                 read_lines)
from seq2seq.data.tokenizer import BOS_ID, EOS_ID, Tokenizer, train_sentencepiece

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
META = "meta.json"
SPLITS = ("train", "valid", "test")


def word_count(line: str) -> int:
    """Words of a line for perplexity per word: whitespace-separated words plus the end of the sentence."""
    return len(line.split()) + 1


@dataclass
class TextSplit:
    ids: list[np.ndarray]  # bare piece ids per line (int32)
    words: np.ndarray  # [N] int64 words per line (word_count)
    text: list[str]  # the lines (valid/test; [] for train)

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class MonolingualCorpus:
    directory: Path
    tokenizer: Tokenizer
    splits: dict[str, TextSplit]  # "train", "valid", and "test" when there is test text
    report: dict


# ---------------------------------------------------------------------------------------- locating
def _read_files(paths: Sequence[str | Path]) -> list[str]:
    lines: list[str] = []
    for path in paths:
        lines.extend(read_lines(path))
    return lines


def _split_file(cfg: MonolingualDataConfig, split: str) -> Path:
    """`{split}.{lang}[.gz]` in root or a mirror, else downloaded (Multi30k with download on)."""
    folders = _search_folders(cfg)
    for folder in folders:
        found = _find_in(folder, split, cfg.lang)
        if found:
            return found
    if cfg.download and cfg.corpus == "multi30k":
        return download_multi30k(Path(cfg.root).expanduser(), split, cfg.lang)
    names = ", ".join(p.name for p in _candidates(Path("."), split, cfg.lang))
    searched = "".join(f"\n  {os.path.abspath(f)}" for f in folders)
    raise CorpusError(f"cannot find the '{split}' split of corpus '{cfg.corpus}': expected one of {names} in "
                      f"one of these folders:{searched}\nset data.root, or give your own text with "
                      "data.train_files=[...]")


def locate(cfg: MonolingualDataConfig) -> dict[str, list[Path]]:
    """The files of each split (train, valid, test; valid may be [] = hold out from train)."""
    if cfg.train_files:
        files = {"train": cfg.train_files, "valid": cfg.valid_files, "test": cfg.test_files}
        for split, paths in files.items():
            for path in paths:
                if not Path(path).expanduser().is_file():
                    raise CorpusError(f"{path}: file not found (data.{split}_files)")
        return {split: [Path(p).expanduser() for p in paths] for split, paths in files.items()}
    out = {"train": [_split_file(cfg, cfg.train_split)], "valid": [_split_file(cfg, cfg.valid_split)]}
    out["test"] = [_split_file(cfg, cfg.test_split)] if cfg.test_split else []
    return out


def _tokenizer_model(cfg: MonolingualDataConfig) -> bytes | None:
    """The sentencepiece model named by `tokenizer_from` (a checkpoint's target side, or a .model file)."""
    if not cfg.tokenizer_from:
        return None
    path = Path(cfg.tokenizer_from).expanduser()
    if not path.is_file():
        raise ConfigError(f"config key 'data.tokenizer_from': {path} does not exist")
    if path.suffix == ".ckpt":
        return read_checkpoint(path)[PAYLOAD_KEY]["tokenizer"]["tgt_model"]
    return path.read_bytes()


# ------------------------------------------------------------------------------------------ cache
def prepare_monolingual(cfg: MonolingualDataConfig) -> MonolingualCorpus:
    """The prepared corpus for `cfg`, from the cache when it exists (see the module doc)."""
    files = locate(cfg)
    given_model = _tokenizer_model(cfg)
    settings = dataclasses.asdict(cfg)
    for key in ("root", "mirrors", "download", "cache_dir", "train_files", "valid_files", "test_files",
                "tokenizer_from"):
        settings.pop(key)  # where things are found is not what they are: the hashes below say that
    for key in SAMPLING_KEYS:  # translation-only keys (0 here): existing caches keep their key
        settings["tokenizer"].pop(key)
    inputs = {split: [file_sha256(p) for p in paths] for split, paths in files.items()}
    if given_model is not None:
        inputs["tokenizer"] = [hashlib.sha256(given_model).hexdigest()]
    blob = json.dumps({"format_version": FORMAT_VERSION, "settings": settings, "inputs": inputs}, sort_keys=True)
    key = hashlib.sha256(blob.encode()).hexdigest()
    cache_dir = Path(cfg.cache_dir).expanduser()
    directory = cache_dir / f"{cfg.corpus}.{cfg.lang}.lm.{key[:12]}"
    if (directory / META).is_file():
        try:
            corpus = load_monolingual(directory)
        except Exception as e:  # damaged: rebuild rather than fail
            log.warning("cache %s is unreadable (%s): rebuilding it", directory, e)
            shutil.rmtree(directory, ignore_errors=True)
        else:
            log.info("reusing cache %s", directory)
            return corpus
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache_dir, prefix=f".{directory.name}.tmp-"))
    try:
        corpus = _build(cfg, files, given_model, tmp)
        (tmp / META).write_text(json.dumps({"format_version": FORMAT_VERSION, "key": key, "settings": settings,
                                            "inputs": {s: [str(p) for p in ps] for s, ps in files.items()},
                                            "report": corpus.report}, indent=2) + "\n", encoding="utf-8")
        os.chmod(tmp, 0o755)
        try:
            os.rename(tmp, directory)
        except OSError:
            if not (directory / META).is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process finished the same cache first
            return load_monolingual(directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    corpus.directory = directory
    log.info("wrote cache %s", directory)
    return corpus


def _build(cfg: MonolingualDataConfig, files: dict[str, list[Path]], given_model: bytes | None,
           out: Path) -> MonolingualCorpus:
    text = {split: _read_files(paths) for split, paths in files.items()}
    names = {split: ", ".join(str(p) for p in paths) for split, paths in files.items()}
    if not files["valid"]:
        n = cfg.valid_holdout
        if len(text["train"]) <= n:
            raise CorpusError(f"{names['train']}: {len(text['train'])} lines, too few to hold out "
                              f"data.valid_holdout={n} for validation and train on the rest; give "
                              "data.valid_files=[...] or lower data.valid_holdout")
        text["valid"], text["train"] = text["train"][-n:], text["train"][:-n]
        names["valid"] = f"the last {n} lines of {names['train']}"
    for split, limit in (("train", cfg.max_train_lines), ("valid", cfg.max_valid_lines)):
        if limit:
            text[split] = text[split][:limit]
    for split in ("train", "valid"):
        if not any(line for line in text[split]):
            raise CorpusError(f"{names[split]}: no non-empty lines for the {split} split")

    train = text["train"]
    report: dict = {"train": {"read": len(train), "dropped": {"empty": 0, "too_many_chars": 0, "too_many_tokens": 0}}}
    dropped = report["train"]["dropped"]
    kept = []
    for line in train:
        if not line:
            dropped["empty"] += 1
        elif len(line) > cfg.max_chars:
            dropped["too_many_chars"] += 1
        else:
            kept.append(line)
    model = given_model if given_model is not None else train_sentencepiece(
        kept, cfg.tokenizer, label=f"language model {cfg.lang}")
    tokenizer = Tokenizer(model, model)
    ids = tokenizer.encode_tgt(kept)
    keep = [i for i, s in enumerate(ids) if len(s) <= cfg.max_tokens]
    dropped["too_many_tokens"] = len(ids) - len(keep)
    encoded = {"train": ([ids[i] for i in keep], [kept[i] for i in keep])}
    for split in ("valid", "test"):
        if split in text and (split == "valid" or files[split]):
            encoded[split] = (tokenizer.encode_tgt(text[split]), text[split])
    report["tokenizer"] = {"vocab_size": tokenizer.tgt_vocab_size, "from": cfg.tokenizer_from or None,
                           "model_type": None if given_model else cfg.tokenizer.model_type}
    (out / "spm.model").write_bytes(model)
    splits = {}
    for split, (seqs, lines) in encoded.items():
        pieces = sum(map(len, seqs))
        report.setdefault(split, {}).update(kept=len(seqs), pieces=pieces, words=sum(map(word_count, lines)))
        log.info("%s (%s): %d lines, %d pieces, %d words%s", split, names[split], len(seqs), pieces,
                 report[split]["words"], f"; dropped {dropped}" if split == "train" else "")
        arrays = [np.asarray(s, dtype=np.int32) for s in seqs]
        lengths = np.array([len(s) for s in seqs], dtype=np.int64)
        words = np.array([word_count(line) for line in lines], dtype=np.int64)
        flat = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int32)
        np.savez(out / f"{split}.npz", ids=flat, lengths=lengths, words=words)
        kept_text = [] if split == "train" else lines
        if kept_text:
            (out / f"{split}.txt").write_text("".join(line + "\n" for line in kept_text), encoding="utf-8")
        splits[split] = TextSplit(arrays, words, list(kept_text))
    return MonolingualCorpus(out, tokenizer, splits, report)


def load_monolingual(directory: Path) -> MonolingualCorpus:
    meta = json.loads((directory / META).read_text(encoding="utf-8"))
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"cache format {meta.get('format_version')}, expected {FORMAT_VERSION}")
    model = (directory / "spm.model").read_bytes()
    splits = {}
    for split in SPLITS:
        path = directory / f"{split}.npz"
        if not path.is_file():
            continue
        with np.load(path) as z:
            offsets = np.concatenate([[0], np.cumsum(z["lengths"])])
            ids = np.split(z["ids"], offsets[1:-1]) if len(z["lengths"]) else []
            words = z["words"]
        text_path = directory / f"{split}.txt"
        text = text_path.read_text(encoding="utf-8").split("\n")[:-1] if text_path.is_file() else []
        splits[split] = TextSplit(list(ids), words, text)
    return MonolingualCorpus(directory, Tokenizer(model, model), splits, meta["report"])


# ---------------------------------------------------------------------------------------- batches
@dataclass
class LMBatch:
    """B sentences of T positions: input BOS + pieces, output pieces + EOS."""

    tokens_in: torch.Tensor  # [B, T] long
    tokens_out: torch.Tensor  # [B, T] long, PAD beyond each length
    mask: torch.Tensor  # [B, T] bool, True at real positions
    words: torch.Tensor  # [B] int64 words per sentence (word_count; 0 where unknown)
    indices: torch.Tensor  # [B] int64 example indices in the split

    def __len__(self) -> int:
        return self.tokens_in.size(0)

    def pin_memory(self) -> LMBatch:
        return LMBatch(self.tokens_in.pin_memory(), self.tokens_out.pin_memory(), self.mask.pin_memory(),
                       self.words, self.indices)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> LMBatch:
        """Move to `device`; `indices` stays on the CPU."""
        move = lambda t: t.to(device, non_blocking=non_blocking)  # noqa: E731
        return LMBatch(move(self.tokens_in), move(self.tokens_out), move(self.mask), move(self.words), self.indices)


def collate_lm(examples: Sequence[tuple[int, Sequence[int], int]]) -> LMBatch:
    """(index, bare piece ids, words) triples -> LMBatch."""
    tokens_in, lengths = _pad([e[1] for e in examples], prefix=BOS_ID, suffix=None)
    tokens_out, _ = _pad([e[1] for e in examples], prefix=None, suffix=EOS_ID)
    return LMBatch(tokens_in, tokens_out, lengths_to_mask(lengths, tokens_in.size(1)),
                   torch.tensor([e[2] for e in examples], dtype=torch.long),
                   torch.tensor([e[0] for e in examples], dtype=torch.long))


class TextDataset(Dataset):
    """Item i is (i, piece ids, words)."""

    def __init__(self, split: TextSplit):
        self.ids = split.ids
        self.words = split.words if len(split.words) == len(split.ids) else np.zeros(len(split.ids), np.int64)
        self.lengths = np.array([len(s) + 1 for s in self.ids], dtype=np.int64)  # + BOS or EOS

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int | list[int]):
        """Example i, or the list of examples of a batch of indices (the training loader's sampler yields
        whole batches, as for `ParallelDataset`)."""
        if isinstance(i, list):
            return [(j, self.ids[j], int(self.words[j])) for j in i]
        return i, self.ids[i], int(self.words[i])
