"""seq2seq-translate on inputs of any size: windows, --resume, --stream (pipe and terminal).

An untrained tiny checkpoint (built in a second) is enough: these tests compare outputs of one model
with itself under different reading, batching and interruption, never its quality.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import os
import pty
import random
import select
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from seq2seq.data import corpus

from seq2seq.cli import translate
from seq2seq.checkpoint.format import MODEL_PREFIX, make_payload
from seq2seq.config import ModelConfig, SearchConfig
from seq2seq.decoding.translator import Translator

from .conftest import synthetic_pairs, write_lines
from .helpers import REPO, tiny_model_and_tokenizer

MODEL = ModelConfig(embedding_size=16, encoder_hidden_size=16, decoder_hidden_size=32, encoder_layers=1,
                    attention_size=16, dropout=0.0, rnn_dropout=0.0)
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}  # buffered, as for a user: no PYTHONUNBUFFERED
ENV.pop("PYTHONUNBUFFERED", None)
SLOW_FIXTURES = ("lines",)  # translated end to end several times by each test (tests/conftest.py: slow tier)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """An untrained tiny model: its outputs stop at the short maximum length (fast, and all different)."""
    model, tokenizer, _ = tiny_model_and_tokenizer(MODEL, 300, 7, 300)
    config = {"model": dataclasses.asdict(MODEL),
              "search": dataclasses.asdict(SearchConfig(max_len_a=3, max_len_b=0.5, batch_tokens=64))}
    path = tmp_path_factory.mktemp("stream") / "tiny.ckpt"
    torch.save({"state_dict": {MODEL_PREFIX + k: v for k, v in model.state_dict().items()},
                "seq2seq": make_payload(config, tokenizer)}, path)
    return path


@pytest.fixture(scope="module")
def lines() -> list[str]:
    src = synthetic_pairs(120, 21)[0]
    src[5] = src[17] = ""  # empty lines are answered without the model: they must keep their place
    return src


def main(*args) -> int:
    return translate.main(["--quiet", *map(str, args)])


# ----------------------------------------------------------------------------------------- reading
@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([b"a", b"\xc3\xa4", b"\n", b"\r", b"\r\n", b" ", b"\t", b"\x00", b"\xe2\x80\xa8",
                                 b"\xc2\x85", b"\xef\xbb\xbf", b"\xff", b"\xc3"]), max_size=14),
       st.booleans())
def test_iter_lines_reads_what_read_lines_reads(tmp_path_factory, pieces, packed):
    """The streaming reader gives read_lines' lines (BOM, CR, controls, unterminated last line) and
    its error for invalid UTF-8, naming the same line and byte.
    Mutation that fails it: `_raw_lines` keeping a leading BOM, or numbering lines from 0."""
    data = b"".join(pieces)
    path = tmp_path_factory.mktemp("lines") / ("in.gz" if packed else "in.txt")
    path.write_bytes(gzip.compress(data) if packed else data)
    try:
        expected = corpus.read_lines(path)
    except corpus.CorpusError as e:
        with pytest.raises(corpus.CorpusError) as got:
            list(corpus.iter_lines(path))
        assert str(got.value) == str(e)
        with pytest.raises(corpus.CorpusError) as got:
            corpus.scan_lines(path)
        assert str(got.value) == str(e)
        return
    assert list(corpus.iter_lines(path)) == expected
    assert corpus.scan_lines(path)[0] == len(expected)
    assert list(corpus.iter_lines(path, skip=2)) == expected[2:]


class Tracked(str):
    """An input line that counts itself while alive (CPython frees it the moment nothing refers to it)."""

    alive = 0

    def __new__(cls, text):
        Tracked.alive += 1
        return super().__new__(cls, text)

    def __del__(self):
        Tracked.alive -= 1


@pytest.mark.parametrize("how", ["file", "gzip file", "gzip stdin"])
def test_reader_holds_at_most_one_window(ckpt, lines, tmp_path, monkeypatch, capsys, how):
    """However long the input, at most --window of its lines are in memory at once, and the output is
    the same (same order) as with one big window.
    Mutations that fail it: reading the whole input before translating (`list(source.read())`), or
    keeping the previous window alive while the next is read (dropping the release in translate_windows)."""
    plain = write_lines(tmp_path / "in.de", lines)
    whole = tmp_path / "whole.txt"
    assert main("--checkpoint", ckpt, "--input", plain, "--output", whole, "--window", 1000) == 0

    real_iter_lines = corpus.iter_lines
    most = []

    def tracked_lines(*args, **kw):
        for line in real_iter_lines(*args, **kw):
            item = Tracked(line)
            most.append(Tracked.alive)
            yield item
            del item

    monkeypatch.setattr(corpus, "iter_lines", tracked_lines)
    windows = []
    real_translate = Translator.translate
    monkeypatch.setattr(Translator, "translate", lambda self, batch, **kw: (windows.append(len(batch)),
                                                                          real_translate(self, batch, **kw))[1])
    source = plain
    if how != "file":
        source = tmp_path / "in.de.gz"
        source.write_bytes(gzip.compress(plain.read_bytes()))
    if how == "gzip stdin":
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(source.read_bytes())))
        assert main("--checkpoint", ckpt, "--window", 7) == 0
        got = capsys.readouterr().out.encode("utf-8")
    else:
        assert main("--checkpoint", ckpt, "--input", source, "--output", tmp_path / "out.txt", "--window", 7) == 0
        got = (tmp_path / "out.txt").read_bytes()
    assert len(most) == len(lines) and max(most) <= 7, max(most)
    assert windows == [7] * (len(lines) // 7) + [len(lines) % 7]
    assert got == whole.read_bytes()


@pytest.mark.parametrize("flags", [["--format", "jsonl", "--alignment"], ["--nbest", "2"], ["--score-reference"]])
def test_small_windows_translate_like_one_window(ckpt, lines, tmp_path, flags):
    """Every output format restores input order and global line numbers across windows; references
    are read in step with their sources.
    Mutation that fails it: `format_line(i, ...)` numbering lines within the window, or reading the
    references of each window from the start of the file."""
    src = write_lines(tmp_path / "in.de", lines)
    if flags == ["--score-reference"]:
        flags = ["--score-reference", write_lines(tmp_path / "ref.en", synthetic_pairs(len(lines), 5)[1])]
    outs = []
    for window in (5, 1000):
        out = tmp_path / f"out{window}"
        assert main("--checkpoint", ckpt, "--input", src, "--output", out, "--window", window, *flags) == 0
        outs.append(out.read_text(encoding="utf-8").splitlines())
    assert len(outs[0]) == len(lines) * (2 if "--nbest" in flags else 1)
    if "jsonl" in flags:
        a, b = ([json.loads(x) for x in out] for out in outs)
        assert [x["line"] for x in a] == list(range(1, len(lines) + 1))
        assert [(x["translation"], x["alignment"]) for x in a] == [(x["translation"], x["alignment"]) for x in b]
        assert [x["score"] for x in a] == pytest.approx([x["score"] for x in b], rel=1e-5)
    elif "--nbest" in flags:
        assert [x.rsplit("\t", 2)[0::2] for x in outs[0]] == [x.rsplit("\t", 2)[0::2] for x in outs[1]]
    else:
        assert [float(x) for x in outs[0]] == pytest.approx([float(x) for x in outs[1]], rel=1e-5)


def test_bad_line_in_a_later_window_stops_before_any_output(ckpt, lines, tmp_path, capsys):
    """The whole input is checked before the first window is written, even to standard output.
    Mutation that fails it: dropping the up-front `scan_lines` (windows 1-2 would be printed)."""
    src = tmp_path / "in.de"
    src.write_bytes("\n".join(lines[:24]).encode() + b"\nzwei \xff Katzen\n")
    assert main("--checkpoint", ckpt, "--input", src, "--window", 10) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and f"{src}: line 25: invalid UTF-8" in captured.err
    ref = write_lines(tmp_path / "ref.en", ["x"] * 3)
    assert main("--checkpoint", ckpt, "--input", write_lines(tmp_path / "ok.de", lines), "--score-reference", ref,
                "--output", tmp_path / "s.txt") == 2
    assert f"--score-reference {ref} has 3 lines but --input" in capsys.readouterr().err
    assert not list(tmp_path.glob("*s.txt*"))


# ------------------------------------------------------------------------------------------ resume
DRIVER = textwrap.dedent("""
    # seq2seq-translate, SIGKILLed by itself after KILL_AT finished batches (0: never).
    import os, signal, sys
    from seq2seq.cli import translate
    kill_at, calls = int(sys.argv[1]), []
    def progress(self, n):
        calls.append(n)
        if len(calls) == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    translate.Progress.__call__ = progress
    code = translate.main(sys.argv[2:])
    print(f"batches={len(calls)}", file=sys.stderr)
    sys.exit(code)
""")


def translate_process(kill_at: int, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", DRIVER, str(kill_at), *map(str, args)], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=300)


def translate_here(monkeypatch, capsys, *args) -> tuple[int, str, int]:
    """seq2seq-translate in this process, as DRIVER runs it never killed (a process start costs seconds of
    imports): (exit status, standard error, finished batches)."""
    calls = []
    monkeypatch.setattr(translate.Progress, "__call__", lambda self, n: calls.append(n))
    capsys.readouterr()
    code = translate.main([*map(str, args)])
    return code, capsys.readouterr().err, len(calls)


@pytest.mark.parametrize("flags", [["--format", "jsonl"],
                                   ["--nbest", "2", "--beam-size", "2"]])
def test_resume_after_kill_equals_uninterrupted_run(ckpt, lines, tmp_path, flags, monkeypatch, capsys):
    """A job SIGKILLed at a random batch continues with --resume and ends with the bytes of an
    uninterrupted run; so does one whose partial file ends mid-line (killed while writing). Only the
    rest is translated, in the windows of the uninterrupted run. The killed job is a process of its own;
    the uninterrupted and the resumed ones run in this process.
    Mutations that fail it: --resume starting over, counting a cut-off last line as complete, or
    resuming at the kept line instead of the start of its window (batches, hence scores, would differ)."""
    src = write_lines(tmp_path / "in.de", lines)
    common = ["--checkpoint", ckpt, "--input", src, "--window", 10, "--batch-tokens", 40, *flags]
    full = tmp_path / "full.txt"
    code, err, batches = translate_here(monkeypatch, capsys, *common, "--output", full, "--quiet")
    assert code == 0 and batches > 4, err[-2000:]  # batches: progress reports, one per batch
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    out = tmp_path / "out.txt"
    killed = translate_process(rng.randint(batches // 4, batches - 1), *common, "--output", out, "--quiet")
    assert killed.returncode == -signal.SIGKILL, (seed, killed.stderr[-2000:])
    [partial] = tmp_path.glob(".out.txt.*.part")
    assert not out.exists() and partial.stat().st_size > 0, seed
    data = partial.read_bytes()
    for cut in (len(data), rng.randrange(1, len(data))):  # as the kill left it; then cut mid-line
        partial.write_bytes(data[:cut])
        done = data[:cut].count(b"\n") // (2 if "--nbest" in flags else 1) // 10 * 10
        code, err, _ = translate_here(monkeypatch, capsys, *common, "--output", out, "--resume")
        assert code == 0, (seed, err[-2000:])
        if done:
            assert f"resuming: {done} of {len(lines)} lines were done" in err, (seed, cut)
        assert f"\n{len(lines) - done} lines in " in "\n" + err, (seed, cut, err)
        assert out.read_bytes() == full.read_bytes(), (seed, cut)
        assert not list(tmp_path.glob(".out.txt.*"))
        out.unlink()


def test_resume_refuses_another_job_and_a_concurrent_one(ckpt, lines, tmp_path, capsys, monkeypatch):
    """--resume never mixes outputs: a partial file of other settings is refused (and kept), one that a
    live run holds is refused; a failed run keeps its lines for --resume, which then completes the job.
    Mutations that fail it: leaving a flag out of `job_fingerprint`, or `abort()` removing a partial
    file that holds lines."""
    import fcntl

    src = write_lines(tmp_path / "in.de", lines)
    out = tmp_path / "out.txt"
    common = ["--checkpoint", ckpt, "--input", src, "--output", out, "--window", 10]
    calls = []
    real = Translator.translate

    def failing(self, batch, **kw):
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("simulated failure in window 4")
        return real(self, batch, **kw)

    monkeypatch.setattr(Translator, "translate", failing)
    with pytest.raises(RuntimeError, match="window 4"):
        main(*common)
    monkeypatch.setattr(Translator, "translate", real)
    [partial] = tmp_path.glob(".out.txt.*.part")
    assert len(partial.read_text().splitlines()) == 30 and "--resume to continue" in capsys.readouterr().err
    kept = partial.read_bytes()

    assert main(*common, "--resume", "--beam-size", "2") == 2
    err = capsys.readouterr().err
    assert partial.name in err and "another input, reference, model or setting" in err
    assert partial.read_bytes() == kept and not out.exists()

    with open(partial, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert main(*common, "--resume") == 2
        assert "another seq2seq-translate is writing this output now" in capsys.readouterr().err
    assert partial.read_bytes() == kept

    assert main(*common, "--resume") == 0
    assert main("--checkpoint", ckpt, "--input", src, "--output", tmp_path / "full.txt", "--window", 10) == 0
    assert out.read_bytes() == (tmp_path / "full.txt").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full.txt", "in.de", "out.txt"]


def test_stream_flag_clashes_are_usage_errors(ckpt):
    for flags in (["--window", "0"], ["--resume"], ["--stream", "--resume", "--output", "x"],
                  ["--stream", "--score-reference", "r"]):
        with pytest.raises(SystemExit) as e:
            main("--checkpoint", ckpt, *flags)
        assert e.value.code == 2, flags


# ------------------------------------------------------------------------------------------ stream
def read_line(fd: int, seconds: float = 60.0) -> bytes:
    """One line from `fd`, or fail if none is complete within `seconds`."""
    got = b""
    while not got.endswith(b"\n"):
        ready, _, _ = select.select([fd], [], [], seconds)
        assert ready, f"no complete output line within {seconds} s (got {got!r})"
        chunk = os.read(fd, 1)
        assert chunk, f"output ended early (got {got!r})"
        got += chunk
    return got


def stream_process(ckpt: Path, stdin, *flags) -> subprocess.Popen:
    # SIGINT back to its default in the child, as for a terminal's foreground process: a test run started in
    # the background by a shell without job control (`pytest &` in a script) inherits SIGINT ignored, and
    # Python then never raises KeyboardInterrupt.
    return subprocess.Popen([sys.executable, "-m", "seq2seq.cli.translate", "--checkpoint", str(ckpt), "--format",
                             "jsonl", *flags], stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=REPO, env=ENV, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def test_stream_through_a_pipe_answers_each_line_before_the_next_arrives(ckpt, lines):
    """--stream answers line 1 while line 2 has not been written yet; a bad line later is named.
    Mutation that fails it: run_stream collecting lines (or the stdout flush removed): line 1 gets no
    answer within the timeout."""
    proc = stream_process(ckpt, subprocess.PIPE, "--stream")
    try:
        for i, line in enumerate([lines[0], "", lines[1]], 1):
            proc.stdin.write((line + "\n").encode())
            proc.stdin.flush()
            answer = json.loads(read_line(proc.stdout.fileno()))
            assert answer["line"] == i and (answer["translation"] == "") == (line == "")
        proc.stdin.write(b"drei \xff Katzen\n")
        proc.stdin.close()
        assert proc.wait(timeout=60) == 2
        assert "<stdin>: line 4: invalid UTF-8" in proc.stderr.read().decode()
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("end", ["ctrl-d", "ctrl-c"])
def test_terminal_input_streams_by_itself(ckpt, lines, end):
    """With a terminal as standard input (a pseudo-terminal here), each line is answered as it is typed;
    Ctrl-D ends the session cleanly, and so does an interrupt (exit 130, no traceback).
    Mutation that fails it: dropping the `sys.stdin.isatty()` switch to --stream (the whole input would be
    awaited first, so line 1 gets no answer), or letting KeyboardInterrupt through run_stream."""
    master, slave = pty.openpty()
    proc = stream_process(ckpt, slave)
    os.close(slave)
    try:
        for i, line in enumerate(lines[:2], 1):
            os.write(master, (line + "\n").encode())
            assert json.loads(read_line(proc.stdout.fileno()))["line"] == i
        if end == "ctrl-d":
            os.write(master, b"\x04")  # Ctrl-D at the start of a line: end of input
        else:
            proc.send_signal(signal.SIGINT)  # what Ctrl-C sends to the terminal's foreground process
        assert proc.wait(timeout=60) == (0 if end == "ctrl-d" else 130)
        err = proc.stderr.read().decode()
        assert "one sentence per line, Ctrl-D to end" in err and "Traceback" not in err, err
        assert ("2 lines in " in err) == (end == "ctrl-d")
    finally:
        proc.kill()
        proc.wait()
        os.close(master)


def test_warnings_name_lines_of_later_windows_by_their_number_in_the_file(ckpt, lines, tmp_path, caplog):
    """A truncated line in the third window is reported as line 13 of the file, not line 3 of its window.
    Mutation that fails it: translate_windows not passing `first_line` to the translator."""
    long = " ".join(["Hund"] * 300)
    src = write_lines(tmp_path / "in.de", [*lines[:12], long, *lines[12:20]])
    assert main("--checkpoint", ckpt, "--input", src, "--output", tmp_path / "out.txt", "--window", 5,
                "--max-src-tokens", 100) == 0
    assert "truncated (line 13)" in caplog.text, caplog.text
