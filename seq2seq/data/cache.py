"""The prepared-corpus cache (built by `seq2seq-prepare`, `seq2seq.cli.prepare`, and by training).

`prepare_corpus(data_cfg)` turns the training corpora and the valid / test files into memory-mapped id
arrays once, in memory that does not grow with the corpus:

1. locate the files (`corpus.find_train_corpora`, `corpus.find_corpus_files`) and hash their bytes;
2. if `{cache_dir}/{corpus}.{src}-{tgt}.{key[:12]}/` exists, map it and stop (no reading, no training);
3. otherwise take the build lock beside it (one builder per job: other processes, ranks and nodes wait,
   then map what it wrote), and
   a. stream the training pairs (the first `max_train_pairs` of the corpora in order), dropping the pairs
      that need no tokenizer to judge (empty, too many characters) into a text file, and keeping a
      seeded reservoir sample of `tokenizer.max_sentences` pairs for sentencepiece;
   b. train sentencepiece on the sample;
   c. stream the kept pairs again in chunks: encode (sentencepiece's threads), drop by piece counts (too
      many pieces, length ratio), append the ids to the token store (`seq2seq.data.store`);
   d. encode valid / test (small; never filtered: their scores must stay comparable with published figures);
4. write all of it into a temporary folder beside the final one and rename it into place, so an
   interrupted run never leaves a half-written cache that a later run would trust.

The key is a SHA-256 over a format version, the SHA-256 of each input file, and every setting that
changes the output; anything else (where the files were found, cache_dir, download, corpus weights) is
left out. Every count (read, used, kept, dropped per reason, <unk> pieces), per corpus too, goes to the
log and into `report`.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import random
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from tqdm import tqdm

from seq2seq import __version__
from seq2seq.config import SAMPLING_KEYS, DataConfig
from seq2seq.data.corpus import (DROP_REASONS, ParallelLines, drop_reason, file_sha256, find_corpus_files,
                                 find_train_corpora, nothing_left_error, read_parallel)
from seq2seq.data.store import CorpusPart, TokenArray, TokenArrayWriter, id_dtype, open_token_array
from seq2seq.data.tokenizer import UNK_ID, Tokenizer, train_sentencepiece
from seq2seq.temporaries import atomic_write_text, owned_prefix, remove_stale

log = logging.getLogger(__name__)

FORMAT_VERSION = 3  # bump whenever the cache layout or the preparation steps change
SPLITS = ("train", "valid", "test")
META = "meta.json"
HASHES = "input_sha256.json"  # InputDigests
RACY_NS = 2_000_000_000  # InputDigests trusts the stamp of a file last written this long before its hash
CHUNK_PAIRS = 20_000  # training pairs encoded and written at once: bounds the memory of step 3c


@dataclass
class EncodedSplit:
    """One split as bare sentencepiece ids (no BOS/EOS); N sentences.

    src, tgt: N id sequences each (`TokenArray`: memory-mapped when loaded from the cache).
    src_text, tgt_text: N cleaned raw lines for valid/test (every line, unfiltered); for train, the kept
    lines when the config samples its segmentation every epoch (`data.tokenizer.sampling_alpha` > 0), else [].
    parts: which corpus each range of pairs came from, with its weight (one part for valid / test).
    """

    src: TokenArray
    tgt: TokenArray
    src_text: list[str]
    tgt_text: list[str]
    parts: list[CorpusPart]

    def __len__(self) -> int:
        return len(self.src)


@dataclass
class PreparedCorpus:
    directory: Path  # the cache folder this was loaded from / written to
    tokenizer: Tokenizer
    splits: dict[str, EncodedSplit]  # "train", "valid", "test"
    report: dict  # per split: read / used / kept / dropped{reason: n} / pieces / unk; plus "tokenizer"


# ---------------------------------------------------------------------------------------- cache key


def split_names(cfg: DataConfig) -> dict[str, str]:
    return {"train": cfg.train_split, "valid": cfg.valid_split, "test": cfg.test_split}


def cache_settings(cfg: DataConfig, tokenizer: Tokenizer | None = None) -> dict[str, Any]:
    """Every setting that changes the prepared output (and nothing that does not). With a given
    `tokenizer` (fine-tuning reuses a checkpoint's), its models take the place of the settings that
    would have trained one."""
    if tokenizer is not None:
        models = tokenizer.state_dict()
        spm = {"reused_sha256": hashlib.sha256(models["src_model"] + b"\0" + models["tgt_model"]).hexdigest()}
    else:  # sampling draws from the cached models at training time: it changes nothing cached
        spm = {k: v for k, v in dataclasses.asdict(cfg.tokenizer).items() if k not in SAMPLING_KEYS}
    return {
        "corpus": cfg.corpus,
        "src_lang": cfg.src_lang,
        "tgt_lang": cfg.tgt_lang,
        "splits": split_names(cfg),
        "train_corpora": [c.label for c in cfg.train_corpora],  # names and order; weights act at training time
        "max_train_pairs": cfg.max_train_pairs,
        "max_valid_pairs": cfg.max_valid_pairs,
        "tokenizer": spm,
        "filter": dataclasses.asdict(cfg.filter),
    }


def cache_key(settings: dict[str, Any], input_hashes: dict[str, list[str]]) -> str:
    """SHA-256 (hex) over the format version, the settings and the input files' SHA-256s."""
    blob = json.dumps({"format_version": FORMAT_VERSION, "settings": settings, "inputs": input_hashes},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


class InputDigests:
    """SHA-256s of input files, remembered in `path` (a JSON file in the cache folder) with each file's
    size, modification time (ns) and inode: a corpus of gigabytes is hashed once, not at every start of
    every rank. Any change to a file (a write updates its mtime) makes it hashed again, so a corpus that
    changes while cached is still detected. A stamp is trusted only when the file had not been written
    for a while when it was hashed (as git does against "racy" stamps): file times tick coarsely, so a
    write just after the hash could leave size and time unchanged."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.known: dict[str, dict] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            self.known = {}
        self.changed = False

    def sha256(self, file: Path) -> str:
        st = os.stat(file)
        stamp = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino}
        name = os.path.abspath(file)
        entry = self.known.get(name)
        if (entry is not None and {k: entry.get(k) for k in stamp} == stamp
                and entry.get("hashed_at_ns", 0) - st.st_mtime_ns > RACY_NS):
            return entry["sha256"]
        hashed_at = time.time_ns()
        digest = file_sha256(file)
        self.known[name] = {**stamp, "hashed_at_ns": hashed_at, "sha256": digest}
        self.changed = True
        return digest

    def save(self) -> None:
        if self.changed:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.path, json.dumps(self.known, indent=1, sort_keys=True) + "\n")


# ------------------------------------------------------------------------------------------ entry point


@dataclass
class CorpusFiles:
    """The input files: `train` lists (name, src, tgt) per training corpus, valid / test one pair each."""

    train: list[tuple[str, Path, Path]]
    valid: tuple[Path, Path]
    test: tuple[Path, Path]

    def pairs(self, split: str) -> list[tuple[Path, Path]]:
        if split == "train":
            return [(src, tgt) for _, src, tgt in self.train]
        return [getattr(self, split)]


def prepare_corpus(cfg: DataConfig, tokenizer: Tokenizer | None = None) -> PreparedCorpus:
    """Return the prepared corpus for `cfg`, building the cache only when it does not exist yet.
    `tokenizer`: encode with these sentencepiece models instead of training new ones: a checkpoint's
    (fine-tuning with `init_from`, or `cfg.tokenizer_from`, which the caller loads and passes here).

    Any number of processes may call this at once (DDP ranks, nodes, parallel runs): one builds the
    cache, the others wait for its lock and then map the finished cache.
    Raises CorpusError (files missing, unreadable, misaligned, nothing left after filtering) or
    TokenizerError (sentencepiece cannot be trained with these settings).
    """
    if tokenizer is None and cfg.tokenizer_from:
        raise ValueError(f"data.tokenizer_from is {cfg.tokenizer_from!r} but no tokenizer was given: the caller "
                         "loads the checkpoint's models (seq2seq.checkpoint.init_from.checkpoint_tokenizer)")
    names = split_names(cfg)
    files = CorpusFiles(find_train_corpora(cfg), find_corpus_files(cfg, names["valid"]),
                        find_corpus_files(cfg, names["test"]))
    cache_dir = Path(cfg.cache_dir).expanduser()
    digests = InputDigests(cache_dir / HASHES)
    hashes = {split: [digests.sha256(p) for pair in files.pairs(split) for p in pair] for split in SPLITS}
    digests.save()
    settings = cache_settings(cfg, tokenizer)
    key = cache_key(settings, hashes)
    directory = cache_dir / f"{cfg.corpus}.{cfg.src_lang}-{cfg.tgt_lang}.{key[:12]}"
    remove_stale(cache_dir)  # builds and deletions of killed runs (one in progress, here or elsewhere, stays)

    train_text = cfg.tokenizer.sampling
    corpus = _load_existing(directory, key, train_text)
    if corpus is None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with build_lock(cache_dir / f".{directory.name}.lock", directory):
            corpus = _load_existing(directory, key, train_text)  # built by the process we waited for
            if corpus is None:
                corpus = _build_into(directory, cfg, files, hashes, settings, key, tokenizer)
    weights = {c.label: c.weight for c in cfg.train_corpora}
    for part in corpus.splits["train"].parts:
        part.weight = weights.get(part.name, 1.0)
    return corpus


def _load_existing(directory: Path, key: str, train_text: bool) -> PreparedCorpus | None:
    """The complete cache in `directory`, or None (absent; damaged or incomplete ones are removed)."""
    if (directory / META).is_file():
        try:
            corpus = load_prepared(directory, key, train_text)
        except Exception as e:  # damaged by hand or by a disk problem: rebuild rather than fail
            log.warning("cache %s is unreadable (%s): rebuilding it", directory, e)
            _remove_dir(directory)
            return None
        log.info("reusing cache %s", directory)
        return corpus
    if directory.exists():
        # A folder without meta.json was not written by us, or is damaged (checked again: another
        # process may have renamed its finished cache into place since the first look).
        if not (directory / META).is_file():
            log.warning("cache folder %s is incomplete: rebuilding it", directory)
            _remove_dir(directory)
    return None


@contextmanager
def build_lock(path: Path, directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on the file `path` (flock: across the processes of a node, and across nodes
    on a shared file system that supports locks, as NFSv4 and Lustre do); say so when another holder
    makes this process wait. The kernel releases it when its holder dies, so a killed build blocks no one.
    The holder deletes the file as it lets go; a waiter that then holds the lock of a deleted file takes
    the lock again on the current one."""
    waited = None
    while True:
        f = open(path, "a")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waited is None:
                log.info("another process is preparing %s; waiting for it", directory)
                waited = time.monotonic()
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            current = os.stat(path).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(f.fileno()).st_ino:
            break
        f.close()  # the lock of a file its holder has deleted: take the current one
    if waited is not None:
        done = (directory / META).is_file()
        log.info("waited %.0f s for %s: %s", time.monotonic() - waited, directory.name,
                 "it is complete" if done else "the other process did not complete it; building it here")
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        f.close()  # releases the lock


def _build_into(directory: Path, cfg: DataConfig, files: CorpusFiles, hashes: dict, settings: dict, key: str,
                tokenizer: Tokenizer | None) -> PreparedCorpus:
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=owned_prefix(directory.name)))
    try:
        _build(cfg, files, hashes, settings, key, tmp, tokenizer)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; a cache may be shared with other users
        try:
            os.rename(tmp, directory)
        except OSError:
            if not (directory / META).is_file():
                raise
            # Another process finished the same cache first (a file system without working locks): use theirs.
            log.info("cache %s was completed by another process; using it", directory)
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote cache %s", directory)
    return load_prepared(directory, key, cfg.tokenizer.sampling)


def _remove_dir(directory: Path) -> None:
    # Rename first so that a concurrent reader never sees a folder that is half deleted.
    trash = directory.with_name(f"{owned_prefix(directory.name)}trash")
    os.rename(directory, trash)
    shutil.rmtree(trash, ignore_errors=True)


# ------------------------------------------------------------------------------------------- building


def _progress(desc: str, total: int | None = None) -> tqdm:
    """A pairs-per-second bar on a terminal (nothing in a log file: the counts are logged at the end)."""
    return tqdm(desc=desc, total=total, unit=" pairs", unit_scale=True, dynamic_ncols=True, disable=None,
                file=sys.stderr, mininterval=0.5)


@dataclass
class _Stage1:
    """What the first pass over the training corpora leaves: their pairs that passed the character tests,
    in `out/.stage1.src|tgt`, counted per corpus, and the sentencepiece sample."""

    read: list[int]
    used: list[int]
    kept: list[int]
    dropped: dict[str, int]
    sample: list[int]  # the sentencepiece sample: pair numbers among the kept (lines of .stage1.*), ascending


def _first_pass(cfg: DataConfig, files: CorpusFiles, out: Path) -> _Stage1:
    size = cfg.tokenizer.max_sentences  # 0: every pair
    rng = random.Random(cfg.tokenizer.seed)
    stage = _Stage1([], [], [], dict.fromkeys(DROP_REASONS, 0), [])
    budget = cfg.max_train_pairs or None
    n = 0  # pairs kept so far, all corpora
    # newline="\n" here and below: a cleaned line holds no line break, and nothing else may split it.
    with open(out / ".stage1.src", "w", encoding="utf-8", newline="\n") as fs, \
            open(out / ".stage1.tgt", "w", encoding="utf-8", newline="\n") as ft, \
            _progress("reading training pairs") as bar:
        for name, src_path, tgt_path in files.train:
            lines = ParallelLines(src_path, tgt_path, limit=budget)
            used = kept = 0
            for src, tgt in lines:
                used += 1
                if used % 1024 == 0:
                    bar.update(1024)
                reason = drop_reason(src, tgt, cfg.filter)
                if reason is not None:
                    stage.dropped[reason] += 1
                    continue
                fs.write(src + "\n")
                ft.write(tgt + "\n")
                if not size or n < size:  # a reservoir sample (algorithm R), seeded: the same every time
                    stage.sample.append(n)
                else:
                    j = rng.randrange(n + 1)
                    if j < size:
                        stage.sample[j] = n
                kept += 1
                n += 1
            bar.update(used % 1024)
            stage.read.append(lines.read)
            stage.used.append(used)
            stage.kept.append(kept)
            if budget is not None:
                budget = max(0, budget - used)
    stage.sample.sort()  # file order, as the corpus gives them
    return stage


def _sampled_lines(path: Path, sample: list[int]) -> Iterator[str]:
    """Lines `sample` (ascending numbers) of a first-pass file, without newlines, in file order."""
    wanted = iter(sample)
    next_wanted = next(wanted, None)
    with open(path, encoding="utf-8", newline="\n") as f:
        for number, line in enumerate(f):
            if number == next_wanted:
                yield line[:-1]
                next_wanted = next(wanted, None)
                if next_wanted is None:
                    return


def _lines(path: Path) -> Iterator[str]:
    """The lines of a file this build wrote (cleaned text, one pair's side per line), without newlines."""
    with open(path, encoding="utf-8", newline="\n") as f:
        for line in f:
            yield line[:-1]


def _train_tokenizer(cfg: DataConfig, out: Path, sample: list[int], kept: int) -> tuple[bytes, bytes]:
    """Sentencepiece on the sampled pairs (both sides, source first, for a joint model), streamed from
    files: the sample's text is never held in Python (it is in sentencepiece's memory). `kept`: the
    pairs of the first pass's files; a sample of fewer of them is first copied out to files of its own.

    Why a copy: sentencepiece reading its sample straight out of the whole first-pass file (9 lines
    skipped for every one taken at 10M pairs) left the heap so fragmented that the trainer took 2.0 GB
    instead of 0.9 GB for the same 1M pairs (scripts/bench/scale.py; docs/results.md)."""
    tok_cfg = dataclasses.replace(cfg.tokenizer, max_sentences=0)  # sampled already (pairs, not lines)
    stage1 = (out / ".stage1.src", out / ".stage1.tgt")
    if len(sample) == kept:
        src_path, tgt_path = stage1
    else:
        src_path, tgt_path = out / ".sample.src", out / ".sample.tgt"
        for source, copy in zip(stage1, (src_path, tgt_path)):
            with open(copy, "w", encoding="utf-8", newline="\n") as f:
                f.writelines(line + "\n" for line in _sampled_lines(source, sample))
    try:
        if tok_cfg.joint:
            model = train_sentencepiece(chain(_lines(src_path), _lines(tgt_path)), tok_cfg,
                                        label=f"joint {cfg.src_lang}+{cfg.tgt_lang}")
            return model, model
        return (train_sentencepiece(_lines(src_path), tok_cfg, label=f"source {cfg.src_lang}"),
                train_sentencepiece(_lines(tgt_path), tok_cfg, label=f"target {cfg.tgt_lang}"))
    finally:
        if src_path not in stage1:
            src_path.unlink(missing_ok=True)
            tgt_path.unlink(missing_ok=True)


def _chunks(out: Path, size: int) -> Iterator[tuple[list[str], list[str]]]:
    """The first pass's kept pairs, `size` at a time."""
    with open(out / ".stage1.src", encoding="utf-8", newline="\n") as fs, \
            open(out / ".stage1.tgt", encoding="utf-8", newline="\n") as ft:
        while True:
            src = [line[:-1] for _, line in zip(range(size), fs)]
            tgt = [line[:-1] for _, line in zip(range(len(src)), ft)]
            if not src:
                return
            yield src, tgt


def _count_unk(seqs: Sequence[Sequence[int]]) -> int:
    return sum(s.count(UNK_ID) for s in seqs)


def _encode_train(cfg: DataConfig, files: CorpusFiles, stage: _Stage1, tokenizer: Tokenizer, out: Path,
                  dtype: np.dtype, text_names: dict[str, str]) -> tuple[list[dict], dict]:
    """Pass 2: encode the kept pairs chunk by chunk, filter by piece counts, write ids and text.
    Returns the parts (name, pairs) and the training split's report."""
    ends = np.cumsum(stage.kept)  # part k holds the first-pass pairs [ends[k-1], ends[k])
    kept_per_part = np.zeros(len(files.train), dtype=np.int64)
    dropped = dict(stage.dropped)
    report = {"src_pieces": 0, "tgt_pieces": 0, "src_unk": 0, "tgt_unk": 0}
    seen = 0
    with TokenArrayWriter(out / "train.src", dtype) as wsrc, TokenArrayWriter(out / "train.tgt", dtype) as wtgt, \
            open(out / text_names["src"], "w", encoding="utf-8", newline="\n") as tsrc, \
            open(out / text_names["tgt"], "w", encoding="utf-8", newline="\n") as ttgt, \
            _progress("encoding training pairs", total=int(ends[-1]) if len(ends) else 0) as bar:
        encode_src, encode_tgt = tokenizer.corpus_encoders()
        for src, tgt in _chunks(out, CHUNK_PAIRS):
            src_ids, tgt_ids = encode_src.encode(src), encode_tgt.encode(tgt)
            keep = []
            for i, (s, t, s_ids, t_ids) in enumerate(zip(src, tgt, src_ids, tgt_ids)):
                reason = drop_reason(s, t, cfg.filter, len(s_ids), len(t_ids))
                if reason is None:
                    keep.append(i)
                else:
                    dropped[reason] += 1
            part_of = np.searchsorted(ends, seen + np.asarray(keep, dtype=np.int64), side="right")
            kept_per_part += np.bincount(part_of, minlength=len(files.train))
            src_ids = [src_ids[i] for i in keep]
            tgt_ids = [tgt_ids[i] for i in keep]
            wsrc.append(src_ids)
            wtgt.append(tgt_ids)
            tsrc.write("".join(src[i] + "\n" for i in keep))
            ttgt.write("".join(tgt[i] + "\n" for i in keep))
            report["src_unk"] += _count_unk(src_ids)
            report["tgt_unk"] += _count_unk(tgt_ids)
            seen += len(src)
            bar.update(len(src))
        report["src_pieces"], report["tgt_pieces"] = wsrc.total, wtgt.total
        arrays = {"src": {"count": wsrc.count, "total": wsrc.total}, "tgt": {"count": wtgt.count, "total": wtgt.total}}
    (out / ".stage1.src").unlink()
    (out / ".stage1.tgt").unlink()
    kept_per_part = kept_per_part.tolist()
    kept = sum(kept_per_part)
    names = [str(p) for pair in files.pairs("train") for p in pair]
    if kept == 0:
        raise nothing_left_error(sum(stage.used), dropped, names)
    report = {"read": sum(stage.read), "used": sum(stage.used), "kept": kept, "dropped": dropped, **report,
              "arrays": arrays}
    if len(files.train) > 1:
        report["corpora"] = [{"name": name, "read": r, "used": u, "kept": k}
                             for (name, _, _), r, u, k in zip(files.train, stage.read, stage.used, kept_per_part)]
    parts = [{"name": name, "pairs": k} for (name, _, _), k in zip(files.train, kept_per_part)]
    return parts, report


def _encode_small(split: str, src: list[str], tgt: list[str], tokenizer: Tokenizer, out: Path,
                  dtype: np.dtype) -> dict:
    """Valid / test: encode every pair (never filtered) and write ids; returns the split's report."""
    src_ids, tgt_ids = tokenizer.encode_src(src), tokenizer.encode_tgt(tgt)
    with TokenArrayWriter(out / f"{split}.src", dtype) as wsrc, TokenArrayWriter(out / f"{split}.tgt", dtype) as wtgt:
        wsrc.append(src_ids)
        wtgt.append(tgt_ids)
    return {"kept": len(src_ids), "dropped": {}, "empty_lines": sum(1 for s, t in zip(src, tgt) if not s or not t),
            "src_pieces": wsrc.total, "tgt_pieces": wtgt.total,
            "src_unk": _count_unk(src_ids), "tgt_unk": _count_unk(tgt_ids),
            "arrays": {"src": {"count": wsrc.count, "total": wsrc.total},
                       "tgt": {"count": wtgt.count, "total": wtgt.total}}}


def _build(cfg: DataConfig, files: CorpusFiles, hashes: dict, settings: dict, key: str, out: Path,
           given: Tokenizer | None = None) -> None:
    """Read, filter, train, encode and write everything into `out`."""
    src_lang, tgt_lang = cfg.src_lang, cfg.tgt_lang
    started = time.monotonic()
    # valid / test first: they are small, and a broken file stops the build before the long part.
    small: dict[str, tuple[list[str], list[str]]] = {}
    report: dict[str, Any] = {}
    for split, limit in (("valid", cfg.max_valid_pairs), ("test", 0)):
        src, tgt = read_parallel(*getattr(files, split))
        used = min(len(src), limit) if limit > 0 else len(src)
        small[split] = (src[:used], tgt[:used])
        report[split] = {"read": len(src), "used": used}

    stage = _first_pass(cfg, files, out)
    if not stage.sample:
        names = [str(p) for pair in files.pairs("train") for p in pair]
        raise nothing_left_error(sum(stage.used), stage.dropped, names)
    if given is not None:
        src_model, tgt_model = given.state_dict()["src_model"], given.state_dict()["tgt_model"]
    else:
        log.info("training sentencepiece on %d of %d training pairs", len(stage.sample), sum(stage.kept))
        src_model, tgt_model = _train_tokenizer(cfg, out, stage.sample, sum(stage.kept))
    stage.sample = []
    tokenizer = Tokenizer(src_model, tgt_model)
    dtype = id_dtype(max(tokenizer.src_vocab_size, tokenizer.tgt_vocab_size))
    report["tokenizer"] = {"joint": tokenizer.joint, "model_type": cfg.tokenizer.model_type,
                           "src_vocab_size": tokenizer.src_vocab_size, "tgt_vocab_size": tokenizer.tgt_vocab_size}

    text_files = {split: {"src": f"{split}.{src_lang}.txt", "tgt": f"{split}.{tgt_lang}.txt"} for split in SPLITS}
    parts, report["train"] = _encode_train(cfg, files, stage, tokenizer, out, dtype, text_files["train"])
    for split in ("valid", "test"):
        src, tgt = small[split]
        report[split].update(_encode_small(split, src, tgt, tokenizer, out, dtype))
        _write_lines(out / text_files[split]["src"], src)
        _write_lines(out / text_files[split]["tgt"], tgt)
    for split in SPLITS:
        _log_split(split, report[split], files.pairs(split))
    elapsed = time.monotonic() - started
    log.info("prepared %d training pairs in %.0f s (%.0f pairs/s)", report["train"]["used"], elapsed,
             report["train"]["used"] / max(elapsed, 1e-9))

    if tokenizer.joint:
        model_files = {"src": "spm.model", "tgt": "spm.model"}
    else:
        model_files = {"src": f"spm.{src_lang}.model", "tgt": f"spm.{tgt_lang}.model"}
    (out / model_files["src"]).write_bytes(src_model)
    (out / model_files["tgt"]).write_bytes(tgt_model)
    meta = {
        "format_version": FORMAT_VERSION,
        "seq2seq_version": __version__,
        "key": key,
        "settings": settings,
        "inputs": {split: [{side: {"path": str(Path(path).resolve()), "sha256": digest}
                            for side, path, digest in zip(("src", "tgt"), pair, hashes[split][2 * i:2 * i + 2])}
                           for i, pair in enumerate(files.pairs(split))]
                   for split in SPLITS},
        "models": model_files,
        "texts": text_files,
        "dtype": dtype.name,
        "parts": parts,
        "report": report,
    }
    # meta.json last: its presence marks a complete folder even if the rename were not atomic.
    (out / META).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _log_split(split: str, r: dict, pairs: list[tuple[Path, Path]]) -> None:
    where = "; ".join(f"{src}, {tgt}" for src, tgt in pairs)
    dropped = ", ".join(f"{k}={v}" for k, v in r["dropped"].items()) or "never filtered"
    log.info("%s (%s): read %d pairs, used %d, kept %d (dropped: %s); %d/%d pieces, %d/%d <unk>",
             split, where, r["read"], r["used"], r["kept"], dropped,
             r["src_pieces"], r["tgt_pieces"], r["src_unk"], r["tgt_unk"])
    for c in r.get("corpora", []):
        log.info("  %s: read %d, used %d, kept %d", c["name"], c["read"], c["used"], c["kept"])
    if r.get("empty_lines"):
        log.warning("%s: %d pairs have an empty side; kept, since %s is never filtered",
                    split, r["empty_lines"], split)


# ------------------------------------------------------------------------------------------- reading


def _write_lines(path: Path, lines: list[str]) -> None:
    # Cleaned lines never contain "\n" (corpus.read_lines splits on it), so one line per sentence is exact.
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def _read_lines(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    return text.split("\n")[:-1] if text else []


def load_prepared(directory: str | os.PathLike, key: str | None = None, train_text: bool = False) -> PreparedCorpus:
    """Map a cache folder written by `prepare_corpus` (checking its key when given); the training split's
    text is read only with `train_text` (what subword sampling needs). Weights of the training parts are
    1 here (`prepare_corpus` sets them from the config)."""
    directory = Path(directory)
    meta = json.loads((directory / META).read_text(encoding="utf-8"))
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"cache format {meta.get('format_version')}, expected {FORMAT_VERSION}")
    if key is not None and meta.get("key") != key:
        raise ValueError("cache key in meta.json does not match its folder")
    models = meta["models"]
    tokenizer = Tokenizer((directory / models["src"]).read_bytes(), (directory / models["tgt"]).read_bytes())
    splits = {}
    for split in SPLITS:
        arrays = meta["report"][split]["arrays"]
        src, tgt = (open_token_array(directory / f"{split}.{side}", meta["dtype"], **arrays[side])
                    for side in ("src", "tgt"))
        if len(src) != len(tgt):
            raise ValueError(f"{split}: {len(src)} source but {len(tgt)} target sentences")
        names = meta["texts"].get(split) if split != "train" or train_text else None
        src_text = _read_lines(directory / names["src"]) if names else []
        tgt_text = _read_lines(directory / names["tgt"]) if names else []
        if names and not (len(src_text) == len(tgt_text) == len(src)):
            raise ValueError(f"{split}: text and ids differ in length")
        if split == "train":
            ends = np.cumsum([p["pairs"] for p in meta["parts"]])
            parts = [CorpusPart(p["name"], int(end) - p["pairs"], int(end)) for p, end in zip(meta["parts"], ends)]
            if not parts or parts[-1].end != len(src):
                raise ValueError(f"train: the parts in meta.json do not cover its {len(src)} pairs")
        else:
            parts = [CorpusPart(split, 0, len(src))]
        splits[split] = EncodedSplit(src, tgt, src_text, tgt_text, parts)
    return PreparedCorpus(directory, tokenizer, splits, meta["report"])
