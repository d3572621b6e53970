"""seq2seq.data.corpus: reading, cleaning, validation, filtering, locating and downloading."""

from __future__ import annotations

import gzip
import hashlib
import os
import urllib.error
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seq2seq.data import corpus
from seq2seq.config import DataConfig, FilterConfig
from seq2seq.data.corpus import CorpusError, filter_pairs, find_corpus_files, read_lines, read_parallel

from .conftest import write_lines


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


# ------------------------------------------------------------------------------------------ read_lines


@pytest.mark.parametrize("name", ["x.txt", "x.gz"])
def test_read_plain_and_gzip(tmp_path, name):
    path = _write(tmp_path / name, "Ein Hund.\nA dog.\nÜber €\n".encode())
    assert read_lines(path) == ["Ein Hund.", "A dog.", "Über €"]


@pytest.mark.parametrize(
    "data, expected",
    [
        (b"", []),
        (b"\n", [""]),
        (b"a", ["a"]),  # missing final newline is fine
        (b"a\nb", ["a", "b"]),
        (b"a\n\nb\n", ["a", "", "b"]),
        (b"\xef\xbb\xbfa\nb\n", ["a", "b"]),  # BOM at file start
        (b"\xef\xbb\xbf", []),
        (b"a\r\nb\r\n", ["a", "b"]),  # CRLF
        (b"a\rb\r\n", ["a b"]),  # a lone CR is whitespace, not a line break (wc -l counts \n only)
        (b"a\x00b\x01c\x7fd\n", ["abcd"]),  # NUL, C0, DEL removed
        ("a\u0085b\u0080c\u009fd\n".encode(), ["a bcd"]),  # NEL is whitespace; other C1 removed
        (b"a\tb\x0bc\x0cd\n", ["a b c d"]),  # tab, VT, FF -> space
        (b"a\x1cb\x1dc\x1ed\x1fe\n", ["a b c d e"]),  # splitlines() would break here; we do not
        ("a\u2028b\u2029c\n".encode(), ["a b c"]),  # Unicode line/paragraph separators: spaces
        ("  a \u00a0  b\u3000 \n".encode(), ["a b"]),  # whitespace collapsed and stripped
        ("x\ufeffy\n".encode(), ["xy"]),  # stray BOM inside a file (concatenated files)
        ("e\u0301 👍🏽\n".encode(), ["e\u0301 👍🏽"]),  # combining marks and emoji untouched
    ],
)
def test_read_lines_normalises(tmp_path, data, expected):
    assert read_lines(_write(tmp_path / "f.txt", data)) == expected
    assert read_lines(_write(tmp_path / "f.gz", data)) == expected


@pytest.mark.parametrize("name", ["bad.txt", "bad.txt.gz"])
@pytest.mark.parametrize("bad", [b"\xff", b"\xc3(", b"\xed\xa0\x80", b"\xe2\x82"])  # incl. a surrogate
def test_invalid_utf8_names_file_and_line(tmp_path, name, bad):
    path = _write(tmp_path / name, b"ok\nfine\nbroken " + bad + b" here\nok\n")
    with pytest.raises(CorpusError) as e:
        read_lines(path)
    msg = str(e.value)
    assert str(path) in msg and "line 3" in msg and "UTF-8" in msg


def test_corrupt_gzip_names_file(tmp_path):
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(b"hello\n" * 100)[:-10])
    with pytest.raises(CorpusError, match="x.gz"):
        read_lines(path)
    path.write_bytes(b"not gzip at all")
    with pytest.raises(CorpusError, match="x.gz"):
        read_lines(path)


def test_missing_file(tmp_path):
    with pytest.raises(CorpusError, match="nope.txt"):
        read_lines(tmp_path / "nope.txt")


# Text with everything that could confuse line splitting or cleaning.
_nasty = st.sampled_from(["\r\n", "\r", "\n", "\x00", "\x1c", "\x85", "\u2028", "\ufeff", "\t", " ",
                          "\u0301", "\u200d", "👩‍👩‍👧", "\U0010ffff", "\x7f", "\x9f"])
_chunk = st.one_of(st.text(max_size=20), _nasty)
_line = st.builds(lambda parts, k: "".join(parts) * k, st.lists(_chunk, max_size=8),
                  st.sampled_from([1, 1, 1, 2, 5000]))  # some very long lines


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.builds("".join, st.lists(_line, max_size=6)), gz=st.booleans())
def test_property_read_back_keeps_line_count(tmp_path, text, gz):
    path = tmp_path / ("p.gz" if gz else "p.txt")
    _write(path, text.encode("utf-8"))
    lines = read_lines(path)
    body = text[1:] if text.startswith("\ufeff") else text  # a leading BOM is not content
    expected = body.count("\n") + (1 if body and not body.endswith("\n") else 0)
    assert len(lines) == expected
    for line in lines:
        assert "\n" not in line and "\r" not in line and "\x00" not in line and "\ufeff" not in line
        assert line == line.strip() and "  " not in line
        assert line.splitlines() in ([], [line])  # nothing left that other tools would split on


# ---------------------------------------------------------------------------------------- read_parallel


def test_read_parallel_counts_differ(tmp_path):
    a = write_lines(tmp_path / "train.de", ["a", "b", "c"])
    b = write_lines(tmp_path / "train.en", ["a", "b"])
    with pytest.raises(CorpusError) as e:
        read_parallel(a, b)
    msg = str(e.value)
    assert str(a) in msg and str(b) in msg and "3" in msg and "2" in msg


def test_read_parallel_empty_file(tmp_path):
    a = write_lines(tmp_path / "train.de", ["a"])
    b = tmp_path / "train.en"
    b.write_bytes(b"")
    with pytest.raises(CorpusError, match=f"{b}.*empty"):
        read_parallel(a, b)
    with pytest.raises(CorpusError, match=f"{b}.*empty"):
        read_parallel(b, a)


def test_read_parallel_ok(tmp_path):
    a = write_lines(tmp_path / "x.de.gz", ["eins", "zwei"])
    b = write_lines(tmp_path / "x.en", ["one", "two"])
    assert read_parallel(a, b) == (["eins", "zwei"], ["one", "two"])


# ---------------------------------------------------------------------------------------- filter_pairs


def test_filter_counts_per_reason():
    cfg = FilterConfig(max_chars=20, max_tokens=5, max_ratio=2.0)
    src = ["ok one", "", "ok", "x" * 21, "fine", "too many", "ratio", "ok again"]
    tgt = ["ok uno", "y", "   ", "short", "y" * 21, "tokens", "r", "ok otra vez"]
    kept, dropped = filter_pairs(src, tgt, cfg)  # no token lengths: only empty / too_long_chars
    assert kept == [0, 5, 6, 7]
    assert dropped == {"empty": 2, "too_long_chars": 2, "too_long_tokens": 0, "ratio": 0}

    src_len = [2, 0, 1, 3, 1, 6, 5, 2]
    tgt_len = [2, 1, 0, 1, 4, 1, 2, 4]
    kept, dropped = filter_pairs(src, tgt, cfg, src_len, tgt_len)
    assert kept == [0, 7]  # ratio 4/2 = 2.0 is not > 2.0
    assert dropped == {"empty": 2, "too_long_chars": 2, "too_long_tokens": 1, "ratio": 1}


def test_filter_first_reason_wins():
    cfg = FilterConfig(max_chars=10, max_tokens=2, max_ratio=1.5)
    kept, dropped = filter_pairs(["", "x" * 30, "ok", "ok"], ["y" * 30, "ok", "ok", "ok"], cfg,
                                 [0, 9, 1, 1], [9, 1, 1, 1])
    assert kept == [2, 3]
    assert dropped == {"empty": 1, "too_long_chars": 1, "too_long_tokens": 0, "ratio": 0}


def test_filter_nothing_survives_names_files():
    cfg = FilterConfig(max_chars=3)
    with pytest.raises(CorpusError) as e:
        filter_pairs(["", "long"], ["x", "long"], cfg, names=["/d/train.de", "/d/train.en"])
    msg = str(e.value)
    assert "/d/train.de" in msg and "/d/train.en" in msg and "empty=1" in msg and "too_long_chars=1" in msg


# ------------------------------------------------------------------------------------------- locating


def _cfg(root, mirrors=(), download=False, corpus_name="multi30k", **kw) -> DataConfig:
    return DataConfig(corpus=corpus_name, root=str(root), mirrors=[str(m) for m in mirrors],
                      download=download, **kw)


def test_find_in_root_then_mirrors(tmp_path):
    root, mirror = tmp_path / "root", tmp_path / "mirror"
    for lang in ("de", "en"):
        write_lines(mirror / f"train.{lang}.gz", ["x"])
    assert find_corpus_files(_cfg(root, [mirror]), "train") == (mirror / "train.de.gz", mirror / "train.en.gz")
    write_lines(root / "train.de", ["x"])
    write_lines(root / "train.en.gz", ["x"])
    write_lines(root / "train.en", ["x"])  # plain preferred over .gz
    assert find_corpus_files(_cfg(root, [mirror]), "train") == (root / "train.de", root / "train.en")


def test_both_sides_must_be_in_one_folder(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    write_lines(a / "val.de", ["x"])
    write_lines(b / "val.en", ["x"])
    write_lines(b / "val.de", ["x"])
    assert find_corpus_files(_cfg(a, [b]), "val") == (b / "val.de", b / "val.en")


def test_relative_mirror_cwd_then_project_root(tmp_path, monkeypatch):
    cwd, project = tmp_path / "cwd", tmp_path / "project"
    write_lines(project / "m/train.de", ["x"])
    write_lines(project / "m/train.en", ["x"])
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(corpus, "PROJECT_ROOT", project)
    assert find_corpus_files(_cfg("nowhere", ["m"]), "train") == (project / "m/train.de", project / "m/train.en")
    write_lines(cwd / "m/train.de", ["x"])
    write_lines(cwd / "m/train.en", ["x"])
    src, tgt = find_corpus_files(_cfg("nowhere", ["m"]), "train")
    assert os.path.abspath(src) == str(cwd / "m/train.de")


@pytest.mark.parametrize("download, corpus_name", [(False, "multi30k"), (True, "mycorpus")])
def test_missing_lists_folders_and_names(tmp_path, monkeypatch, download, corpus_name):
    monkeypatch.setattr(corpus, "_fetch", lambda url: pytest.fail("must not download"))
    root, mirror = tmp_path / "root", tmp_path / "mirror"
    with pytest.raises(CorpusError) as e:
        find_corpus_files(_cfg(root, [mirror], download=download, corpus_name=corpus_name), "train")
    msg = str(e.value)
    for expected in (str(root), str(mirror), "train.de", "train.de.gz", "train.en", "train.en.gz",
                     "data.root", "data.mirrors"):
        assert expected in msg


def test_real_multi30k_via_mirror(multi30k_dir, tmp_path):
    src, tgt = find_corpus_files(_cfg(tmp_path / "empty", [multi30k_dir], src_lang="en", tgt_lang="cs"), "val")
    a, b = read_parallel(src, tgt)
    assert len(a) == len(b) == 1014 and all(a) and all(b)


# ------------------------------------------------------------------------------------------- download


def _fake_release(monkeypatch, content: dict[str, bytes], calls: list):
    """Serve gzip(content[name]) and pretend the table expects exactly that content."""
    table = dict(corpus.MULTI30K_SHA256)
    for name, data in content.items():
        table[name] = hashlib.sha256(data).hexdigest()
    monkeypatch.setattr(corpus, "MULTI30K_SHA256", table)

    def fetch(url):
        calls.append(url)
        return gzip.compress(content[url.rsplit("/", 1)[1]])

    monkeypatch.setattr(corpus, "_fetch", fetch)


def test_download_success_renames_into_root(tmp_path, monkeypatch):
    calls = []
    _fake_release(monkeypatch, {"val.de.gz": b"ein Hund\n", "val.en.gz": b"a dog\n"}, calls)
    root = tmp_path / "root"
    src, tgt = find_corpus_files(_cfg(root, [tmp_path / "mirror"], download=True), "val")
    assert (src, tgt) == (root / "val.de.gz", root / "val.en.gz")
    assert calls == [corpus.MULTI30K_URL + "val.de.gz", corpus.MULTI30K_URL + "val.en.gz"]
    assert sorted(p.name for p in root.iterdir()) == ["val.de.gz", "val.en.gz"]  # no temp files left
    assert read_parallel(src, tgt) == (["ein Hund"], ["a dog"])
    # Now found locally: no second download.
    assert find_corpus_files(_cfg(root, download=True), "val") == (src, tgt)
    assert len(calls) == 2


def test_download_checksum_failure(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus, "_fetch", lambda url: gzip.compress(b"tampered\n"))
    root = tmp_path / "root"
    with pytest.raises(CorpusError) as e:
        find_corpus_files(_cfg(root, download=True), "train")
    msg = str(e.value)
    assert corpus.MULTI30K_URL + "train.de.gz" in msg and "SHA-256" in msg
    assert "data.root=/path/to/folder" in msg and "data.mirrors" in msg
    assert not root.exists() or not any(root.iterdir())  # nothing half-written


def test_download_network_failure(tmp_path, monkeypatch):
    def fetch(url):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(corpus, "_fetch", fetch)
    with pytest.raises(CorpusError) as e:
        find_corpus_files(_cfg(tmp_path / "root", download=True), "train")
    msg = str(e.value)
    assert corpus.MULTI30K_URL + "train.de.gz" in msg and "no network" in msg and "data.root" in msg


def test_download_not_gzip(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus, "_fetch", lambda url: b"<html>rate limited</html>")
    with pytest.raises(CorpusError, match="not a gzip file"):
        find_corpus_files(_cfg(tmp_path / "root", download=True), "train")


def test_checksum_table_matches_shared_copy(multi30k_dir):
    for name in ("val.de.gz", "test_2016_flickr.en.gz"):
        data = gzip.decompress((multi30k_dir / name).read_bytes())
        assert hashlib.sha256(data).hexdigest() == corpus.MULTI30K_SHA256[name]
