"""seq2seq.data.cache: building, reusing and invalidating the cache; seq2seq-prepare (seq2seq.cli.prepare)."""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from seq2seq.data import cache as prep
from seq2seq.config import CONF_DIR, ConfigError, DataConfig, FilterConfig, TokenizerConfig, hydra_errors
from seq2seq.data.corpus import CorpusError, read_lines
from seq2seq.cli.prepare import prepare
from seq2seq.data.cache import EncodedSplit, PreparedCorpus, load_prepared, prepare_corpus
from seq2seq.data.tokenizer import TokenizerError

from .conftest import write_lines

REPO = Path(__file__).resolve().parents[1]

# Training pairs that each trip exactly one filter (with max_chars=300, max_tokens=40, max_ratio=3).
BAD_PAIRS = {
    "empty": ("", "the dog"),
    "too_long_chars": ("a" * 400, "a"),
    "too_long_tokens": (" ".join(["dog"] * 50), " ".join(["god"] * 50)),
    "ratio": ("dog", "eht nam snur no der esuoh llams syalp htiw dlihc"),
}
EXTRA = {f"{split}.{lang}": [pair[i] for pair in BAD_PAIRS.values()]
         for split in ("train", "val", "test_2016_flickr") for i, lang in enumerate(("de", "en"))}


def data_cfg(root: Path, cache: Path, **kw) -> DataConfig:
    kw.setdefault("tokenizer", TokenizerConfig(vocab_size=60, byte_fallback=False))
    kw.setdefault("filter", FilterConfig(max_chars=300, max_tokens=40, max_ratio=3.0))
    return DataConfig(root=str(root), mirrors=[], download=False, cache_dir=str(cache), **kw)


@pytest.fixture
def built(toy_corpus, tmp_path, caplog):
    """A toy corpus with bad pairs in every split, prepared once."""
    caplog.set_level(logging.INFO, logger="seq2seq.data.cache")
    root = toy_corpus(extra=EXTRA, gz=True)
    cfg = data_cfg(root, tmp_path / "cache")
    return cfg, prepare_corpus(cfg)


def _cache_entries(cache: Path) -> list[str]:
    """What the cache folder holds, but for the remembered input digests (prep.InputDigests)."""
    return sorted(p.name for p in cache.iterdir() if p.name != prep.HASHES) if cache.exists() else []


# --------------------------------------------------------------------------------------------- build


def test_build_contents_and_report(built, caplog):
    cfg, corpus = built
    assert isinstance(corpus, PreparedCorpus) and set(corpus.splits) == {"train", "valid", "test"}
    assert all(isinstance(s, EncodedSplit) for s in corpus.splits.values())
    assert corpus.directory.name.startswith("multi30k.de-en.") and len(corpus.directory.name) == 27
    r = corpus.report
    assert r["train"]["read"] == r["train"]["used"] == 304 and r["train"]["kept"] == 300
    assert r["train"]["dropped"] == {reason: 1 for reason in BAD_PAIRS}
    train = corpus.splits["train"]
    assert len(train.src) == len(train.tgt) == 300 and train.src_text == [] and train.tgt_text == []
    # Memory-mapped, not loaded: the flat arrays are read-only maps of the cache's files (uint16: 60 pieces).
    for side in (train.src, train.tgt):
        assert isinstance(side.ids, np.memmap) and isinstance(side.offsets, np.memmap) and not side.ids.flags.writeable
        assert side.ids.dtype == np.uint16 and Path(side.ids.filename).parent == corpus.directory
    assert all(len(a) > 0 and a.ndim == 1 for a in train.src)
    assert [(p.name, p.start, p.end, p.weight) for p in train.parts] == [("multi30k", 0, 300, 1.0)]
    # Every count is logged, never silently.
    text = "\n".join(r.getMessage() for r in caplog.get_records("setup"))  # built in the fixture
    assert "read 304 pairs" in text and "kept 300" in text
    assert "empty=1, too_long_chars=1, too_long_tokens=1, ratio=1" in text


def test_valid_and_test_never_filtered(built):
    cfg, corpus = built
    root = Path(cfg.root)
    for split, stem, n in (("valid", "val", 44), ("test", "test_2016_flickr", 34)):
        s = corpus.splits[split]
        assert len(s.src) == len(s.tgt) == len(s.src_text) == len(s.tgt_text) == n
        assert s.src_text == read_lines(root / f"{stem}.de.gz")
        assert s.tgt_text == read_lines(root / f"{stem}.en.gz")
        assert corpus.tokenizer.decode_tgt(s.tgt) == s.tgt_text  # toy text: exact round trip
        assert corpus.report[split]["kept"] == corpus.report[split]["read"] == n
        assert corpus.report[split]["dropped"] == {} and corpus.report[split]["empty_lines"] == 1


def test_truncation(toy_corpus, tmp_path):
    corpus = prepare_corpus(data_cfg(toy_corpus(), tmp_path / "cache", max_train_pairs=100, max_valid_pairs=10))
    assert corpus.report["train"] == {**corpus.report["train"], "read": 300, "used": 100, "kept": 100}
    assert len(corpus.splits["train"].src) == 100
    assert len(corpus.splits["valid"].src) == 10 and len(corpus.splits["valid"].tgt_text) == 10
    assert len(corpus.splits["test"].src) == 30  # the test split is never truncated


def test_joint_and_separate_models(toy_corpus, tmp_path):
    root = toy_corpus()
    joint = prepare_corpus(data_cfg(root, tmp_path / "cache"))
    assert joint.tokenizer.joint and (joint.directory / "spm.model").is_file()
    sep_cfg = data_cfg(root, tmp_path / "cache",
                       tokenizer=TokenizerConfig(vocab_size=50, byte_fallback=False, joint=False))
    sep = prepare_corpus(sep_cfg)
    assert not sep.tokenizer.joint and sep.directory != joint.directory
    assert {p.name for p in sep.directory.glob("*.model")} == {"spm.de.model", "spm.en.model"}
    again = prepare_corpus(sep_cfg)
    assert not again.tokenizer.joint
    assert again.tokenizer.decode_src(again.splits["valid"].src) == again.splits["valid"].src_text


def test_everything_filtered(toy_corpus, tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(CorpusError, match=r"dropped all 300 pairs .*train\.de.*train\.en.*too_long_chars=300"):
        prepare_corpus(data_cfg(toy_corpus(), cache, filter=FilterConfig(max_chars=2)))
    assert _cache_entries(cache) == []


def test_tokenizer_error_leaves_no_cache(toy_corpus, tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(TokenizerError, match="data.tokenizer.vocab_size"):
        prepare_corpus(data_cfg(toy_corpus(), cache, tokenizer=TokenizerConfig(vocab_size=5000)))
    assert _cache_entries(cache) == []


# --------------------------------------------------------------------------------------------- cache


def test_cache_reused_without_work(built, monkeypatch, caplog):
    cfg, first = built
    meta = first.directory / "meta.json"
    stamp = meta.stat().st_mtime_ns

    def forbidden(*a, **k):
        raise AssertionError("a cache hit must not read text or train sentencepiece")

    monkeypatch.setattr(prep, "train_sentencepiece", forbidden)
    monkeypatch.setattr(prep, "read_parallel", forbidden)
    caplog.clear()
    second = prepare_corpus(cfg)
    assert f"reusing cache {first.directory}" in caplog.text
    assert second.directory == first.directory and meta.stat().st_mtime_ns == stamp
    assert _cache_entries(Path(cfg.cache_dir)) == [first.directory.name]  # no temporary folders
    assert second.report == first.report
    assert second.tokenizer.state_dict() == first.tokenizer.state_dict()
    for split in ("train", "valid", "test"):
        a, b = first.splits[split], second.splits[split]
        assert a.src_text == b.src_text and a.tgt_text == b.tgt_text
        for x, y in zip([*a.src, *a.tgt], [*b.src, *b.tgt], strict=True):
            assert x.dtype == y.dtype == np.uint16 and np.array_equal(x, y)


@pytest.mark.parametrize("change", [
    dict(tokenizer=TokenizerConfig(vocab_size=61, byte_fallback=False)),
    dict(tokenizer=TokenizerConfig(vocab_size=60, byte_fallback=False, seed=2)),
    dict(filter=FilterConfig(max_chars=300, max_tokens=40, max_ratio=3.5)),
    dict(max_train_pairs=200),
    dict(max_valid_pairs=20),
])
def test_changed_setting_new_key(built, change):
    cfg, first = built
    other = prepare_corpus(dataclasses.replace(cfg, **change))
    assert other.directory != first.directory and other.directory.parent == first.directory.parent


def test_changed_input_file_new_key(built):
    cfg, first = built
    path = Path(cfg.root) / "val.en.gz"
    lines = read_lines(path)
    write_lines(path, ["a changed reference"] + lines[1:])
    other = prepare_corpus(cfg)
    assert other.directory != first.directory
    assert other.splits["valid"].tgt_text[0] == "a changed reference"


def test_location_is_not_part_of_the_key(built, tmp_path):
    cfg, first = built
    moved = shutil.copytree(cfg.root, tmp_path / "elsewhere")
    again = prepare_corpus(dataclasses.replace(cfg, root=str(tmp_path / "nowhere"), mirrors=[str(moved)]))
    assert again.directory == first.directory


def test_key_covers_every_output_setting():
    # A new DataConfig field must either enter the cache key or be listed here as location-only (or as
    # never prepared: test_splits are read as text at the end of training).
    location_only = {"root", "mirrors", "download", "cache_dir", "test_splits"}
    settings = prep.cache_settings(DataConfig())
    # tokenizer_from enters as the reused models' hash (cache_settings with a tokenizer), not as a path.
    covered = set(settings) | {"train_split", "valid_split", "test_split", "tokenizer_from"}
    assert {f.name for f in dataclasses.fields(DataConfig)} - location_only <= covered


@pytest.mark.parametrize("exc", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_crash_leaves_no_half_cache(toy_corpus, tmp_path, monkeypatch, exc):
    calls = []

    def save_then_crash(*a, **k):
        calls.append(1)
        if len(calls) == 2:  # the training ids written, valid's not
            raise exc
        return real_save(*a, **k)

    real_save = prep._encode_small
    monkeypatch.setattr(prep, "_encode_small", save_then_crash)
    cfg = data_cfg(toy_corpus(), tmp_path / "cache")
    with pytest.raises(type(exc)):
        prepare_corpus(cfg)
    assert _cache_entries(tmp_path / "cache") == []
    monkeypatch.setattr(prep, "_encode_small", real_save)
    assert len(prepare_corpus(cfg).splits["valid"].src) == 40


def test_damaged_cache_is_rebuilt(built, caplog):
    cfg, first = built
    (first.directory / "valid.src.bin").unlink()
    again = prepare_corpus(cfg)
    assert "unreadable" in caplog.text and again.directory == first.directory
    assert len(again.splits["valid"].src) == 44
    shutil.rmtree(first.directory)
    first.directory.mkdir()  # a folder with our name but no meta.json
    assert len(prepare_corpus(cfg).splits["valid"].src) == 44
    assert _cache_entries(Path(cfg.cache_dir)) == [first.directory.name]


def test_another_process_finished_first(toy_corpus, tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="seq2seq.data.cache")
    real_build = prep._build

    def build_and_race(cfg, files, hashes, settings, key, out, given=None):
        real_build(cfg, files, hashes, settings, key, out, given)
        final = out.parent / f"{cfg.corpus}.{cfg.src_lang}-{cfg.tgt_lang}.{key[:12]}"
        shutil.copytree(out, final)  # a process on a node without working locks renames its copy first

    monkeypatch.setattr(prep, "_build", build_and_race)
    corpus = prepare_corpus(data_cfg(toy_corpus(), tmp_path / "cache"))
    assert "completed by another process" in caplog.text
    assert _cache_entries(tmp_path / "cache") == [corpus.directory.name]
    assert len(corpus.splits["test"].src) == 30


# -------------------------------------------------------------------------------- Hydra config and CLI


def test_prepare_from_composed_config(toy_corpus, tmp_path):
    from hydra import compose, initialize_config_dir

    root, cache = toy_corpus(), tmp_path / "cache"
    overrides = [f"data.root={root}", "data.mirrors=[]", "data.download=false", f"data.cache_dir={cache}",
                 "data.tokenizer.vocab_size=60", "data.tokenizer.byte_fallback=false"]
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("train", overrides=overrides)
    corpus = prepare(cfg)
    assert corpus.directory.parent == cache and len(corpus.splits["train"].src) == 300
    with pytest.raises(ConfigError, match="data.tokenizer.model_type"):
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)), hydra_errors():  # the schema refuses it
            bad = compose("train", overrides=overrides + ["data.tokenizer.model_type=wordpiece"])
        prepare(bad)


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "seq2seq.cli.prepare", *args, f"hydra.run.dir={cwd}/run"],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_cli_builds_reuses_and_reports_errors_cleanly(toy_corpus, tmp_path):
    root, cache = toy_corpus(), tmp_path / "cache"
    args = [f"data.root={root}", "data.mirrors=[]", "data.download=false", f"data.cache_dir={cache}",
            "data.tokenizer.vocab_size=60", "data.tokenizer.byte_fallback=false"]
    first = _cli(args, tmp_path)
    assert first.returncode == 0, first.stderr
    assert "prepared train 300, valid 40, test 30 pairs" in first.stdout
    second = _cli(args, tmp_path)
    assert second.returncode == 0 and "reusing cache" in second.stdout + second.stderr

    for extra, message in ((["data.root=/does/not/exist"], "error: cannot find the 'train' split"),
                           (["data.tokenizer.vocab_size=5000"], "error: config key 'data.tokenizer.vocab_size'"),
                           (["data.tgt_lang=de"], "error: config keys 'data.src_lang' and 'data.tgt_lang'")):
        bad = _cli(args + extra, tmp_path)
        assert bad.returncode == 2, bad.stderr
        assert bad.stderr.startswith(message) and "Traceback" not in bad.stderr


def test_cli_run_folder_is_named_after_the_prepare_step(toy_corpus, tmp_path):
    """`seq2seq-prepare` writes its run folder under outputs/prepare/, not outputs/train/ (even with
    an experiment that names its training runs). Mutation that makes it fail: prepare.main not adding
    `task_name=prepare`."""
    args = [f"data.root={toy_corpus()}", "data.mirrors=[]", "data.download=false",
            f"data.cache_dir={tmp_path / 'cache'}", "data.tokenizer.vocab_size=60", "data.tokenizer.byte_fallback=false"]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for extra in ([], ["experiment=quickstart"]):
        proc = subprocess.run([sys.executable, "-m", "seq2seq.cli.prepare", *args, *extra], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert [p.name for p in (tmp_path / "outputs").iterdir()] == ["prepare"]


def test_cli_real_multi30k_from_another_folder(multi30k_dir, tmp_path):
    # The documented command; the relative mirror ../shared/data/multi30k resolves from the project root.
    cache = tmp_path / "cache"
    result = _cli(["data.src_lang=en", "data.tgt_lang=fr", f"data.cache_dir={cache}"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "prepared train 29000, valid 1014, test 1000 pairs" in result.stdout
    (directory,) = [p for p in cache.iterdir() if p.is_dir()]  # beside it: prep.HASHES
    corpus = load_prepared(directory)  # its speed: scripts/bench/data.py (no wall-clock limit in tests)
    assert corpus.report["train"]["kept"] == len(corpus.splits["train"].src) > 28000
    assert corpus.splits["valid"].tgt_text == read_lines(multi30k_dir / "val.fr.gz")
    assert corpus.report["valid"]["src_unk"] == corpus.report["test"]["tgt_unk"] == 0  # byte fallback
    hyp = corpus.tokenizer.decode_tgt(corpus.splits["test"].tgt[:20])
    assert hyp == corpus.splits["test"].tgt_text[:20]
