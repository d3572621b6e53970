"""The prepared-corpus cache (built by `seq2seq-prepare`, `seq2seq.cli.prepare`, and by training).

`prepare_corpus(data_cfg)` turns three pairs of text files into integer arrays once:

1. locate the train / valid / test files (`corpus.find_corpus_files`) and hash their bytes;
2. if `{cache_dir}/{corpus}.{src}-{tgt}.{key[:12]}/` exists, load it and stop (no reading, no training);
3. otherwise read and validate every split, keep the first `max_train_pairs` / `max_valid_pairs`,
   filter the *training* split (empty / too many characters), train sentencepiece on what is left,
   filter it again by piece counts (too many pieces / length ratio), and encode every split;
4. write the cache into a temporary folder beside the final one and rename it into place, so an
   interrupted run never leaves a half-written cache that a later run would trust.

The key is a SHA-256 over a format version, the SHA-256 of each input file, and every setting that
changes the output; anything else (where the files were found, cache_dir, download) is left out.
Valid and test are never filtered: their scores must stay comparable with published figures.
Every count (read, used, kept, dropped per reason, <unk> pieces) goes to the log and into `report`.
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
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

from seq2seq import __version__
from seq2seq.config import SAMPLING_KEYS, DataConfig
from seq2seq.data.corpus import file_sha256, filter_pairs, find_corpus_files, read_parallel
from seq2seq.data.tokenizer import UNK_ID, Tokenizer, train_sentencepiece
from seq2seq.temporaries import owned_prefix, remove_stale

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # bump whenever the cache layout or the preparation steps change
SPLITS = ("train", "valid", "test")
META = "meta.json"


@dataclass
class EncodedSplit:
    """One split as bare sentencepiece ids (no BOS/EOS); N sentences.

    src, tgt: N int32 arrays of shape [len_i] (views into one flat array when loaded from the cache).
    src_text, tgt_text: N cleaned raw lines for valid/test (every line, unfiltered); for train, the kept
    lines when the config samples its segmentation every epoch (`data.tokenizer.sampling_alpha` > 0), else [].
    """

    src: list[np.ndarray]
    tgt: list[np.ndarray]
    src_text: list[str]
    tgt_text: list[str]

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


# ------------------------------------------------------------------------------------------ entry point


def prepare_corpus(cfg: DataConfig, tokenizer: Tokenizer | None = None) -> PreparedCorpus:
    """Return the prepared corpus for `cfg`, building the cache only when it does not exist yet.
    `tokenizer`: encode with these sentencepiece models instead of training new ones: a checkpoint's
    (fine-tuning with `init_from`, or `cfg.tokenizer_from`, which the caller loads and passes here).

    Raises CorpusError (files missing, unreadable, misaligned, nothing left after filtering) or
    TokenizerError (sentencepiece cannot be trained with these settings).
    """
    if tokenizer is None and cfg.tokenizer_from:
        raise ValueError(f"data.tokenizer_from is {cfg.tokenizer_from!r} but no tokenizer was given: the caller "
                         "loads the checkpoint's models (seq2seq.checkpoint.init_from.checkpoint_tokenizer)")
    files = {split: find_corpus_files(cfg, name) for split, name in split_names(cfg).items()}
    hashes = {split: [file_sha256(p) for p in pair] for split, pair in files.items()}
    settings = cache_settings(cfg, tokenizer)
    key = cache_key(settings, hashes)
    cache_dir = Path(cfg.cache_dir).expanduser()
    directory = cache_dir / f"{cfg.corpus}.{cfg.src_lang}-{cfg.tgt_lang}.{key[:12]}"
    remove_stale(cache_dir)  # builds and deletions of killed runs (one in progress, here or elsewhere, stays)

    train_text = cfg.tokenizer.sampling
    if (directory / META).is_file():
        try:
            corpus = load_prepared(directory, key, train_text)
        except Exception as e:  # damaged by hand or by a disk problem: rebuild rather than fail
            log.warning("cache %s is unreadable (%s): rebuilding it", directory, e)
            _remove_dir(directory)
        else:
            log.info("reusing cache %s", directory)
            return corpus
    elif directory.exists() and not (directory / META).is_file():
        # A folder without meta.json was not written by us, or is damaged (checked again: another
        # process may have renamed its finished cache into place since the first look).
        log.warning("cache folder %s is incomplete: rebuilding it", directory)
        _remove_dir(directory)

    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache_dir, prefix=owned_prefix(directory.name)))
    try:
        corpus = _build(cfg, files, hashes, settings, key, tmp, tokenizer)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; a cache may be shared with other users
        try:
            os.rename(tmp, directory)
        except OSError:
            if not (directory / META).is_file():
                raise
            # Another process (another node, a parallel run) finished the same cache first: use theirs.
            log.info("cache %s was completed by another process; using it", directory)
            shutil.rmtree(tmp, ignore_errors=True)
            return load_prepared(directory, key, train_text)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    corpus.directory = directory
    if not train_text:  # as a cache hit gives it
        corpus.splits["train"].src_text, corpus.splits["train"].tgt_text = [], []
    log.info("wrote cache %s", directory)
    return corpus


def _remove_dir(directory: Path) -> None:
    # Rename first so that a concurrent reader never sees a folder that is half deleted.
    trash = directory.with_name(f"{owned_prefix(directory.name)}trash")
    os.rename(directory, trash)
    shutil.rmtree(trash, ignore_errors=True)


# ------------------------------------------------------------------------------------------- building


def _count_unk(seqs: list[list[int]]) -> int:
    return sum(s.count(UNK_ID) for s in seqs)


def _build(cfg: DataConfig, files: dict, hashes: dict, settings: dict, key: str, out: Path,
           given: Tokenizer | None = None) -> PreparedCorpus:
    """Read, filter, train, encode and write everything into `out`; returns the corpus."""
    src_lang, tgt_lang = cfg.src_lang, cfg.tgt_lang
    report: dict[str, Any] = {}
    text: dict[str, tuple[list[str], list[str]]] = {}
    limits = {"train": cfg.max_train_pairs, "valid": cfg.max_valid_pairs, "test": 0}
    for split in SPLITS:
        src, tgt = read_parallel(*files[split])
        used = min(len(src), limits[split]) if limits[split] > 0 else len(src)
        text[split] = (src[:used], tgt[:used])
        report[split] = {"read": len(src), "used": used}

    # Training split, stage 1: the tests that need no tokenizer, so that sentencepiece never learns
    # from empty pairs or from junk lines thousands of characters long.
    train_src, train_tgt = text["train"]
    names = [str(p) for p in files["train"]]
    kept, dropped = filter_pairs(train_src, train_tgt, cfg.filter, names=names)
    train_src = [train_src[i] for i in kept]
    train_tgt = [train_tgt[i] for i in kept]

    tok_cfg = cfg.tokenizer
    if given is not None:
        src_model, tgt_model = given.state_dict()["src_model"], given.state_dict()["tgt_model"]
    elif tok_cfg.joint:
        model = train_sentencepiece(train_src + train_tgt, tok_cfg, label=f"joint {src_lang}+{tgt_lang}")
        src_model = tgt_model = model
    else:
        src_model = train_sentencepiece(train_src, tok_cfg, label=f"source {src_lang}")
        tgt_model = train_sentencepiece(train_tgt, tok_cfg, label=f"target {tgt_lang}")
    tokenizer = Tokenizer(src_model, tgt_model)
    report["tokenizer"] = {"joint": tokenizer.joint, "model_type": tok_cfg.model_type,
                           "src_vocab_size": tokenizer.src_vocab_size,
                           "tgt_vocab_size": tokenizer.tgt_vocab_size}

    # Training split, stage 2: piece counts and length ratio.
    src_ids, tgt_ids = tokenizer.encode_src(train_src), tokenizer.encode_tgt(train_tgt)
    kept2, dropped2 = filter_pairs(train_src, train_tgt, cfg.filter, [len(s) for s in src_ids],
                                   [len(t) for t in tgt_ids], names=names)
    encoded = {"train": ([src_ids[i] for i in kept2], [tgt_ids[i] for i in kept2])}
    text["train"] = ([train_src[i] for i in kept2], [train_tgt[i] for i in kept2])  # aligned with the ids
    report["train"]["dropped"] = {r: dropped[r] + dropped2[r] for r in dropped}
    for split in ("valid", "test"):
        src, tgt = text[split]
        encoded[split] = (tokenizer.encode_src(src), tokenizer.encode_tgt(tgt))
        report[split]["dropped"] = {}
        report[split]["empty_lines"] = sum(1 for s, t in zip(src, tgt) if not s or not t)

    for split in SPLITS:
        src_ids, tgt_ids = encoded[split]
        report[split].update(
            kept=len(src_ids),
            src_pieces=sum(map(len, src_ids)), tgt_pieces=sum(map(len, tgt_ids)),
            src_unk=_count_unk(src_ids), tgt_unk=_count_unk(tgt_ids),
        )
        _log_split(split, report[split], files[split])

    # Write. The training text (the kept pairs) is read back only to sample segmentations from it.
    if tokenizer.joint:
        model_files = {"src": "spm.model", "tgt": "spm.model"}
    else:
        model_files = {"src": f"spm.{src_lang}.model", "tgt": f"spm.{tgt_lang}.model"}
    (out / model_files["src"]).write_bytes(src_model)
    (out / model_files["tgt"]).write_bytes(tgt_model)
    text_files: dict[str, dict[str, str]] = {}
    splits: dict[str, EncodedSplit] = {}
    for split in SPLITS:
        src_ids, tgt_ids = encoded[split]
        src_arrays, tgt_arrays = _save_npz(out / f"{split}.npz", src_ids, tgt_ids)
        src_text, tgt_text = text[split]
        text_files[split] = {"src": f"{split}.{src_lang}.txt", "tgt": f"{split}.{tgt_lang}.txt"}
        _write_lines(out / text_files[split]["src"], src_text)
        _write_lines(out / text_files[split]["tgt"], tgt_text)
        splits[split] = EncodedSplit(src_arrays, tgt_arrays, list(src_text), list(tgt_text))

    meta = {
        "format_version": FORMAT_VERSION,
        "seq2seq_version": __version__,
        "key": key,
        "settings": settings,
        "inputs": {split: {side: {"path": str(Path(path).resolve()), "sha256": digest}
                           for side, path, digest in zip(("src", "tgt"), files[split], hashes[split])}
                   for split in SPLITS},
        "models": model_files,
        "texts": text_files,
        "report": report,
    }
    # meta.json last: its presence marks a complete folder even if the rename were not atomic.
    (out / META).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return PreparedCorpus(out, tokenizer, splits, report)


def _log_split(split: str, r: dict, files: tuple) -> None:
    dropped = ", ".join(f"{k}={v}" for k, v in r["dropped"].items()) or "never filtered"
    log.info("%s (%s, %s): read %d pairs, used %d, kept %d (dropped: %s); %d/%d pieces, %d/%d <unk>",
             split, files[0], files[1], r["read"], r["used"], r["kept"], dropped,
             r["src_pieces"], r["tgt_pieces"], r["src_unk"], r["tgt_unk"])
    if r.get("empty_lines"):
        log.warning("%s: %d pairs have an empty side; kept, since %s is never filtered",
                    split, r["empty_lines"], split)


# ----------------------------------------------------------------------------------- storage format


def _save_npz(path: Path, src: list[list[int]], tgt: list[list[int]]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Store each side flat (int32 ids) + offsets (int64, N+1 entries, offsets[0] = 0).

    Returns the per-sentence arrays (views into the flat arrays), exactly as `_load_npz` gives them.
    """
    arrays = {}
    for side, seqs in (("src", src), ("tgt", tgt)):
        lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
        offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        ids = np.fromiter(chain.from_iterable(seqs), dtype=np.int32, count=int(offsets[-1]))
        arrays[f"{side}_ids"], arrays[f"{side}_offsets"] = ids, offsets
    np.savez(path, **arrays)  # uncompressed: loading is a memcpy
    return _unflatten(arrays["src_ids"], arrays["src_offsets"]), _unflatten(arrays["tgt_ids"], arrays["tgt_offsets"])


def _unflatten(ids: np.ndarray, offsets: np.ndarray) -> list[np.ndarray]:
    if len(offsets) < 1 or offsets[0] != 0 or offsets[-1] != len(ids):
        raise ValueError("ids and offsets do not match")
    return np.split(ids, offsets[1:-1])


def _load_npz(path: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    with np.load(path) as z:
        return _unflatten(z["src_ids"], z["src_offsets"]), _unflatten(z["tgt_ids"], z["tgt_offsets"])


def _write_lines(path: Path, lines: list[str]) -> None:
    # Cleaned lines never contain "\n" (corpus.read_lines splits on it), so one line per sentence is exact.
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def _read_lines(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    return text.split("\n")[:-1] if text else []


def load_prepared(directory: str | os.PathLike, key: str | None = None, train_text: bool = False) -> PreparedCorpus:
    """Load a cache folder written by `prepare_corpus` (checking its key when given); the training
    split's text only with `train_text` (what subword sampling needs)."""
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
        src, tgt = _load_npz(directory / f"{split}.npz")
        names = meta["texts"].get(split) if split != "train" or train_text else None
        src_text = _read_lines(directory / names["src"]) if names else []
        tgt_text = _read_lines(directory / names["tgt"]) if names else []
        if names and not (len(src_text) == len(tgt_text) == len(src) == len(tgt)):
            raise ValueError(f"{split}: text and ids differ in length")
        splits[split] = EncodedSplit(src, tgt, src_text, tgt_text)
    return PreparedCorpus(directory, tokenizer, splits, meta["report"])
