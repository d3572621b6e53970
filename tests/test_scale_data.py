"""Corpora of any size (issue 32), the preparation side: streaming into memory-mapped arrays, the word
memo of the encoder, one builder per cache however many processes race for it, several weighted
training corpora, and bad input deep inside a big file."""

from __future__ import annotations

import gzip
import logging
import os
import pickle
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from seq2seq.config import ConfigError, DataConfig, FilterConfig, TokenizerConfig, TrainCorpusConfig, section
from seq2seq.data import cache as prep
from seq2seq.data.cache import prepare_corpus
from seq2seq.data.corpus import CorpusError, read_lines
from seq2seq.data.store import TokenArray, TokenArrayWriter, id_dtype, open_token_array
from seq2seq.data.tokenizer import Tokenizer, train_sentencepiece

from .conftest import synthetic_pairs, write_lines

REPO = Path(__file__).resolve().parents[1]


def data_cfg(root: Path, cache: Path, **kw) -> DataConfig:
    kw.setdefault("tokenizer", TokenizerConfig(vocab_size=60, byte_fallback=False))
    kw.setdefault("filter", FilterConfig(max_chars=300, max_tokens=40, max_ratio=3.0))
    return DataConfig(root=str(root), mirrors=[], download=False, cache_dir=str(cache), **kw)


# ------------------------------------------------------------------------------------------ the store


def test_token_store_round_trip_in_chunks(tmp_path):
    """Chunks appended one after another read back as one array of sequences, mapped read-only; the
    smallest dtype that holds the vocabulary is chosen."""
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, 70_000, rng.integers(0, 9)).tolist() for _ in range(500)]
    assert id_dtype(65_536) == np.uint16 and id_dtype(65_537) == np.uint32
    with TokenArrayWriter(tmp_path / "x", np.uint32) as writer:
        for start in range(0, 500, 64):
            writer.append(seqs[start:start + 64])
    arr = open_token_array(tmp_path / "x", "uint32", writer.count, writer.total)
    assert isinstance(arr.ids, np.memmap) and not arr.ids.flags.writeable
    assert len(arr) == 500 and [a.tolist() for a in arr] == seqs
    assert arr.lengths.tolist() == [len(s) for s in seqs] and arr[-1].tolist() == seqs[-1]
    copy = pickle.loads(pickle.dumps(arr))  # to another process (ddp_spawn): mapped again, not copied
    assert len(pickle.dumps(arr)) < 1000 and isinstance(copy.ids, np.memmap) and copy[7].tolist() == seqs[7]
    small = TokenArray.from_sequences(seqs[:3])
    assert [a.tolist() for a in pickle.loads(pickle.dumps(small))] == seqs[:3]
    with pytest.raises(ValueError, match="does not fit"):
        with TokenArrayWriter(tmp_path / "y", np.uint16) as small:
            small.append([[70_000]])
    with pytest.raises(ValueError, match="bytes, expected"):  # a truncated file is refused, not misread
        open_token_array(tmp_path / "x", "uint32", writer.count, writer.total + 1)


def test_word_memo_encoder_equals_sentencepiece(multi30k_dir):
    """The corpus encoder gives sentencepiece's own output, for every model type, also for lines whose
    words NFKC turns into several words or into nothing. Mutation that makes it fail: remembering
    every word (dropping the normalization check)."""
    lines = read_lines(multi30k_dir / "val.de.gz") + read_lines(multi30k_dir / "val.en.gz")
    odd = ["a\u00a8b x", "", "x \u200b y", "\ufb01ne \u2460\u2461", "Stra\u00dfe \u01c5", "\u2474 1\u20442", "\u00bd tea",
           "x\u00a8", "\u00a8 \u00a8\u00a8"]
    for model_type in ("bpe", "unigram", "char"):
        model = train_sentencepiece(lines, TokenizerConfig(model_type=model_type, vocab_size=600))
        tok = Tokenizer(model, model)
        enc, same = tok.corpus_encoders()
        assert same is enc  # joint: one memo for both sides
        for batch in (lines[:700] + odd, lines[700:] + odd):  # the second batch mostly from the memo
            assert enc.encode(batch) == tok.encode_src(batch), model_type
        assert enc.memo and enc.unsafe


# ---------------------------------------------------------------------------------------- the cache


def test_training_split_is_mapped_from_the_cache_not_loaded(toy_corpus, tmp_path):
    """A hit maps the id files: no array of the training split is a copy in memory."""
    cfg = data_cfg(toy_corpus(), tmp_path / "cache")
    prepare_corpus(cfg)
    train = prepare_corpus(cfg).splits["train"]
    for side in (train.src, train.tgt):
        assert isinstance(side, TokenArray)
        assert isinstance(side.ids, np.memmap) and isinstance(side.offsets, np.memmap)
        assert side[3].base is not None and np.shares_memory(side[3], side.ids)  # items are views of the map


def test_sentencepiece_learns_from_a_bounded_sample(toy_corpus, tmp_path, monkeypatch):
    """`tokenizer.max_sentences` pairs reach sentencepiece (both sides for a joint model), drawn from the
    whole corpus (not its head), the same draw every time; 0 gives it every pair."""
    seen = []
    real = prep.train_sentencepiece

    def spy(lines, cfg, label=""):
        seen.append(list(lines))
        return real(seen[-1], cfg, label)

    monkeypatch.setattr(prep, "train_sentencepiece", spy)
    root = toy_corpus()
    src, tgt = read_lines(root / "train.de"), read_lines(root / "train.en")
    for n, cache in ((100, "a"), (100, "b"), (0, "c")):
        corpus = prepare_corpus(data_cfg(root, tmp_path / cache,
                                         tokenizer=TokenizerConfig(vocab_size=60, byte_fallback=False, max_sentences=n)))
        assert not [p.name for p in corpus.directory.iterdir() if p.name.startswith(".")]  # no working copies left
    first, again, everything = seen
    assert first == again and len(first) == 200
    assert set(first[:100]) <= set(src) and set(first[100:]) <= set(tgt)
    assert max(src.index(line) for line in first[:100]) > 150  # a sample of all 300, not the first 100
    assert everything == src + tgt


def test_racing_processes_build_the_cache_once(toy_corpus, tmp_path, monkeypatch, caplog):
    """Processes (here threads, each with its own lock file handle, as separate processes have) that
    miss the same cache at once: one trains sentencepiece and writes it, the others wait and map it.
    Mutation that makes it fail: `build_lock` not locking (three sentencepiece trainings)."""
    caplog.set_level(logging.INFO, logger="seq2seq.data.cache")
    trainings = []
    real = prep.train_sentencepiece

    def slow_training(lines, cfg, label=""):
        trainings.append(label)
        time.sleep(1.0)  # the others arrive while this one builds
        return real(lines, cfg, label)

    monkeypatch.setattr(prep, "train_sentencepiece", slow_training)
    cfg = data_cfg(toy_corpus(), tmp_path / "cache")
    results, errors = [], []

    def run():
        try:
            results.append(prepare_corpus(cfg))
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(results) == 3
    assert len(trainings) == 1
    assert len({r.directory for r in results}) == 1 and len(results[0].splits["train"]) == 300
    assert caplog.text.count("waiting for it") == 2
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted([results[0].directory.name, prep.HASHES])


def test_racing_prepare_commands_train_one_tokenizer(multi30k_dir, tmp_path):
    """Two `seq2seq-prepare` processes started together on a missing Multi30k cache (as DDP ranks or
    nodes under SLURM would): exactly one trains sentencepiece; both end with the same cache."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    args = ["data.src_lang=en", "data.tgt_lang=de", "data.mirrors=[]", f"data.root={multi30k_dir}",
            f"data.cache_dir={tmp_path / 'cache'}", "data.download=false"]
    procs = [subprocess.Popen([sys.executable, "-m", "seq2seq.cli.prepare", *args, f"hydra.run.dir={tmp_path}/r{i}"],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    joined = "\n".join(outputs)
    assert joined.count("training sentencepiece") == 1, joined
    assert len([p for p in (tmp_path / "cache").iterdir() if p.name != prep.HASHES]) == 1


# ------------------------------------------------------------------------------- several corpora


def _corpus_files(folder: Path, stem: str, n: int, seed: int) -> None:
    src, tgt = synthetic_pairs(n, seed)
    write_lines(folder / f"{stem}.de", src)
    write_lines(folder / f"{stem}.en", tgt)


def test_several_training_corpora_share_one_vocabulary(toy_corpus, tmp_path):
    """Corpora given as a folder and as a file prefix are concatenated in order into one training split
    with one tokenizer; each keeps its range of pairs (its `part`), its weight and its counts; the
    weights do not change the cache. Multi30k's single folder gives one part."""
    root = toy_corpus()  # valid / test come from data.root as always
    _corpus_files(tmp_path / "europarl", "train", 120, 11)
    _corpus_files(tmp_path / "wmt", "news-commentary.de-en", 80, 12)
    corpora = [TrainCorpusConfig(path=str(tmp_path / "europarl"), weight=2.0),
               TrainCorpusConfig(path=str(tmp_path / "wmt" / "news-commentary.de-en"), weight=0.5, name="nc")]
    corpus = prepare_corpus(data_cfg(root, tmp_path / "cache", train_corpora=corpora))
    train = corpus.splits["train"]
    assert [(p.name, p.start, p.end, p.weight) for p in train.parts] == [("europarl", 0, 120, 2.0), ("nc", 120, 200, 0.5)]
    assert [c["name"] for c in corpus.report["train"]["corpora"]] == ["europarl", "nc"]
    assert len(train) == 200 and len(corpus.splits["valid"]) == 40
    decoded = corpus.tokenizer.decode_src(train.src[118:122])
    assert decoded == synthetic_pairs(120, 11)[0][118:] + synthetic_pairs(80, 12)[0][:2]
    reweighted = prepare_corpus(data_cfg(root, tmp_path / "cache", train_corpora=[
        TrainCorpusConfig(path=str(tmp_path / "europarl"), weight=1.0), corpora[1]]))
    assert reweighted.directory == corpus.directory and reweighted.splits["train"].parts[0].weight == 1.0


def test_several_corpora_errors_name_the_entry(toy_corpus, tmp_path):
    root = toy_corpus()
    _corpus_files(tmp_path / "a", "train", 20, 1)
    missing = [TrainCorpusConfig(path=str(tmp_path / "a")), TrainCorpusConfig(path=str(tmp_path / "b" / "cc"))]
    with pytest.raises(CorpusError, match=r"data.train_corpora\[1\] \(cc\): cannot find .*cc\.de\[\.gz\]"):
        prepare_corpus(data_cfg(root, tmp_path / "cache", train_corpora=missing))
    with pytest.raises(ConfigError, match=r"train_corpora' names 'a' twice"):
        section(DataConfig, {"train_corpora": [{"path": "x/a"}, {"path": "y/a"}]}, "data")
    with pytest.raises(ConfigError, match=r"data.train_corpora\[0\].weight' must be >= 0"):
        section(DataConfig, {"train_corpora": [{"path": "x", "weight": -1}]}, "data")
    with pytest.raises(ConfigError, match="every weight is 0"):
        section(DataConfig, {"train_corpora": [{"path": "x", "weight": 0}]}, "data")


# ------------------------------------------------------------------------------- bad input at scale


def _big_pair(folder: Path, n: int) -> list[bytes]:
    """train.de.gz / train.en.gz of `n` short pairs in `folder`; returns the source lines."""
    folder.mkdir(parents=True, exist_ok=True)
    words = [f"w{i}".encode() for i in range(50)]
    src = [b"%s %s" % (words[i % 50], words[i % 7]) for i in range(n)]
    for lang, lines in (("de", src), ("en", src)):
        with gzip.open(folder / f"train.{lang}.gz", "wb", compresslevel=1) as f:
            f.write(b"\n".join(lines) + b"\n")
    return src


@pytest.mark.slow  # streams a million pairs twice (no rule of conftest.py sees that)
def test_bad_input_deep_in_a_big_corpus_names_file_and_line(toy_corpus, tmp_path):
    """A bad UTF-8 byte at line 900,000 of a million-line file, a million-line file beside a shorter one,
    an empty file: each stops the preparation with the file and line named, and leaves no cache."""
    root = toy_corpus()
    big = tmp_path / "big"
    lines = _big_pair(big, 1_000_000)
    broken = tmp_path / "broken"
    broken.mkdir()
    with gzip.open(broken / "train.de.gz", "wb", compresslevel=1) as f:
        f.write(b"\n".join(lines[:899_999] + [b"caf\xe9 au lait"] + lines[900_000:]) + b"\n")
    (broken / "train.en.gz").symlink_to(big / "train.en.gz")
    short = tmp_path / "short"
    short.mkdir()
    with gzip.open(short / "train.en.gz", "wb", compresslevel=1) as f:
        f.write(b"\n".join(lines[:999_990]) + b"\n")
    (short / "train.de.gz").symlink_to(big / "train.de.gz")
    empty = tmp_path / "empty"
    empty.mkdir()
    write_lines(empty / "train.de", [])
    (empty / "train.en.gz").symlink_to(big / "train.en.gz")
    cases = {
        "broken": r"broken/train\.de\.gz: line 900000: invalid UTF-8 \(byte 4 of the line: e9\)",
        "short": r"short/train\.de\.gz has 1000000 lines, .*short/train\.en\.gz has 999990 lines",
        "empty": r"empty/train\.de: file is empty",
    }
    for name, message in cases.items():
        cache = tmp_path / f"cache_{name}"
        with pytest.raises(CorpusError, match=message):
            prepare_corpus(data_cfg(root, cache, train_corpora=[TrainCorpusConfig(path=str(tmp_path / name))]))
        assert [p.name for p in cache.iterdir()] == [prep.HASHES]  # nothing half written


def test_input_files_are_hashed_once_until_they_change(toy_corpus, tmp_path, monkeypatch):
    """The cache key needs every input file's SHA-256: a start (of every rank) reads the remembered digest
    instead of gigabytes of corpus, until the file changes. Mutation that makes it fail: InputDigests
    ignoring the size and time of the file (the changed reference would not be seen)."""
    root = toy_corpus()
    written = time.time() - 60
    for f in root.iterdir():
        os.utime(f, (written, written))  # as a downloaded corpus: not written in the last seconds
    cfg = data_cfg(root, tmp_path / "cache")
    first = prepare_corpus(cfg)
    hashed = []
    real = prep.file_sha256
    monkeypatch.setattr(prep, "file_sha256", lambda path: hashed.append(Path(path).name) or real(path))
    assert prepare_corpus(cfg).directory == first.directory and hashed == []
    write_lines(root / "val.en", ["a changed reference"] + read_lines(root / "val.en")[1:])
    changed = prepare_corpus(cfg)
    assert hashed == ["val.en"] and changed.directory != first.directory
    assert changed.splits["valid"].tgt_text[0] == "a changed reference"


def test_training_batches_come_from_the_map_and_follow_the_weights(toy_corpus, tmp_path):
    """The training loader reads the memory-mapped split itself (no copy), and one epoch of it holds
    round(weight x pairs) examples of each corpus. Mutation that makes it fail: the datamodule not
    passing the split's parts to the sampler (every corpus once)."""
    from seq2seq.config import BatchingConfig
    from seq2seq.data.datamodule import TranslationDataModule

    root = toy_corpus()
    _corpus_files(tmp_path / "big", "train", 200, 21)
    _corpus_files(tmp_path / "small", "train", 60, 22)
    corpora = [TrainCorpusConfig(path=str(tmp_path / "big"), weight=0.5),
               TrainCorpusConfig(path=str(tmp_path / "small"), weight=3.0)]
    dm = TranslationDataModule(data_cfg(root, tmp_path / "cache", train_corpora=corpora),
                               BatchingConfig(max_tokens=400), seed=3)
    dm.setup("fit")
    train = dm.corpus.splits["train"]
    loader = dm.train_dataloader()
    assert loader.dataset.src is train.src and isinstance(loader.dataset.src.ids, np.memmap)
    big, small = (len(p) for p in train.parts)
    for epoch in (0, 1):
        loader.sampler.set_epoch(epoch)
        seen = np.concatenate([batch.indices.numpy() for batch in loader])
        assert (seen < big).sum() == round(0.5 * big) and (seen >= big).sum() == 3 * small
