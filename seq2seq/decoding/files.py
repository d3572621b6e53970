"""Translating a file: the input checked whole before any output, a window of lines at a time, and an
output that appears only when complete but can be resumed (seq2seq-translate; the input reader also
serves seq2seq-generate).

- `Input`: a file, or standard input copied to a temporary file first, checked whole (strict UTF-8,
  line count, a fingerprint of its contents) in constant memory, then read one cleaned line at a time.
- `translate_windows`: `window` lines read, length-sorted into batches (by the Translator) and
  translated at a time, so memory depends on the window, not on the input's size; each window's output
  is written as soon as it is done, in input order. `translate_stream`: one line at a time, each
  written before the next is read (interactive use, pipes).
- `PartialOutput`: the output file's hidden twin `.NAME.JOB.part`, renamed over NAME only when the job
  is complete, so an interrupted job never leaves a file that looks done; it keeps its complete lines
  for `resume`, which cuts them back to whole windows so that the final file is byte-identical to that
  of an uninterrupted run. JOB (`job_fingerprint`) fingerprints the input, the models and the settings.
"""

from __future__ import annotations

import dataclasses
import glob
import gzip
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from seq2seq.data import corpus
from seq2seq.data.corpus import CorpusError
from seq2seq.decoding.output import OutputFormat, format_line, format_scores, plot_attention

try:
    import fcntl  # POSIX; elsewhere there is no lock
except ImportError:
    fcntl = None

if TYPE_CHECKING:  # the torch side; this module itself needs no torch (seq2seq-translate --backend onnxruntime)
    from seq2seq.decoding.translator import Translation, Translator

log = logging.getLogger(__name__)

# rerank(translations) -> translations: an n-best list rescored and re-sorted (lm.fusion.rerank, bound)
Rerank = Callable[[list["Translation"]], list["Translation"]]


class Input:
    """The input file, checked whole before any output is written (in constant memory: one line at a time).

    Standard input ("-") is first copied to a temporary file, gzip detected, so that it is checked and
    read like a file; `close()` removes that copy.
    """

    def __init__(self, path: str):
        self.spooled = path == "-"
        self.name = "<stdin>" if self.spooled else path  # what errors call it
        self.path = spool_stdin() if self.spooled else Path(path)
        try:
            self.lines, self.sha256 = corpus.scan_lines(self.path, name=self.name)
        except BaseException:
            self.close()
            raise

    def read(self, skip: int = 0) -> Iterator[str]:
        """Its cleaned lines, one at a time (`corpus.iter_lines`), the first `skip` passed over."""
        return corpus.iter_lines(self.path, name=self.name, skip=skip)

    def close(self) -> None:
        if self.spooled:
            self.path.unlink(missing_ok=True)


def spool_stdin() -> Path:
    """Standard input copied (in blocks) to a temporary file named .gz when it is gzip data."""
    stream = sys.stdin.buffer
    head = stream.read(2)
    fd, tmp = tempfile.mkstemp(prefix="seq2seq-translate-stdin.", suffix=".gz" if head == b"\x1f\x8b" else ".txt")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(head)
            shutil.copyfileobj(stream, f, 1 << 20)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def stdin_lines() -> Iterator[str]:
    """Standard input's cleaned lines as they arrive (gzip data decompressed), for a stream."""
    stream = sys.stdin.buffer
    if hasattr(stream, "peek") and stream.peek(2)[:2] == b"\x1f\x8b":  # peek waits for the first line only
        stream = gzip.GzipFile(fileobj=stream, mode="rb")
    return corpus.iter_lines(stream=stream, name="<stdin>")


def write_stdout(text: str) -> None:
    """`text` on standard output as UTF-8 whatever the locale says, flushed."""
    sys.stdout.flush()
    sys.stdout.buffer.write(text.encode("utf-8"))
    sys.stdout.buffer.flush()


class PartialOutput:
    """The output file's hidden twin `.NAME.JOB.part` beside it, renamed over NAME when the job is done.

    JOB is a fingerprint of what decides the output (input and reference contents, models, flags), so
    `resume` finds the partial output of the same job only, keeps its complete lines and appends
    the rest. A job that stops after writing lines (killed, interrupted, failed) leaves its partial
    output for `--resume`; one that wrote nothing removes it. A lock stops two runs of one job from
    writing the same file at once. `unit`: output lines per input line (--nbest K in text: K).
    """

    def __init__(self, path: str, job: str, resume: bool, unit: int):
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise CorpusError(f"output folder {self.path.parent} does not exist (for --output {path})")
        self.tmp = self.path.parent / f".{self.path.name}.{job}.part"
        self.unit = unit
        others = sorted(p.name for p in self.path.parent.glob(f".{glob.escape(self.path.name)}.*.part")
                        if p != self.tmp and not p.name.endswith(".stream.part"))  # --stream's: never resumed
        existed = self.tmp.exists()
        if resume and not existed and others:
            raise CorpusError(f"--resume: no partial output of this job beside {self.path}; {', '.join(others)} "
                              "was written with another input, reference, model or setting. Run the same "
                              "command as before, or remove that file to start over")
        fd = os.open(self.tmp, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released by the system when the process ends
        except BlockingIOError:
            os.close(fd)
            raise CorpusError(f"{self.tmp}: another seq2seq-translate is writing this output now") from None
        self.file = os.fdopen(fd, "r+b")
        self.kept = 0  # output lines taken over from an earlier run
        if existed and resume:
            self.kept = self._complete_lines()
        elif existed and self.file.seek(0, os.SEEK_END) > 0:
            log.warning("%s holds the output of an interrupted run of this job: starting over (--resume "
                        "would continue it)", self.tmp)
        self.file.truncate(self.file.seek(self._offset(self.kept)))
        self.written = 0  # output lines this run

    def resume_point(self, window: int) -> int:
        """Input lines to skip: the kept ones, cut back to whole windows (the rest is written again), so
        that the resumed job translates the same windows as an uninterrupted one and writes the same bytes."""
        done = self.kept // self.unit // window * window
        self.kept = done * self.unit
        self.file.truncate(self.file.seek(self._offset(self.kept)))
        return done

    def _complete_lines(self) -> int:
        self.file.seek(0)
        return sum(block.count(b"\n") for block in iter(lambda: self.file.read(1 << 20), b""))

    def _offset(self, lines: int) -> int:
        """Byte offset just after the first `lines` lines (all of them complete)."""
        self.file.seek(0)
        offset = 0
        while lines > 0:
            block = self.file.read(1 << 20)
            count = block.count(b"\n")
            if not block:
                raise ValueError(f"{self.tmp} holds fewer than {lines} more lines")
            if count < lines:
                offset, lines = offset + len(block), lines - count
                continue
            end = -1
            for _ in range(lines):
                end = block.index(b"\n", end + 1)
            return offset + end + 1
        return offset

    def write(self, text: str) -> None:
        self.file.write(text.encode("utf-8"))
        self.file.flush()  # whole lines reach the file as soon as they are done: a killed job keeps them
        self.written += text.count("\n")

    def commit(self) -> None:
        self.file.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        """Keep the lines done (for --resume), or leave nothing behind when there are none."""
        self.file.close()
        if self.kept + self.written == 0:
            self.tmp.unlink(missing_ok=True)
        else:
            print(f"{self.kept + self.written} output lines kept in {self.tmp}: run the same command with "
                  "--resume to continue", file=sys.stderr)


def job_fingerprint(source: Input, refs: Input | None, models: Sequence[Path], settings: dict[str, Any]) -> str:
    """JOB of a partial output's name: 12 hex digits of a hash of what decides the output bytes, the input
    and reference contents, the models (path, size, time) and `settings` (plain values)."""
    job = {"input": source.sha256, "reference": refs.sha256 if refs else None,
           "models": [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in models],
           "flags": settings}  # "flags": the key of earlier releases, so a job keeps its name
    return hashlib.sha256(json.dumps(job, sort_keys=True).encode()).hexdigest()[:12]


def translate_lines(translator: Translator, lines: list[str], nbest: int, rerank: Rerank | None = None,
                    with_attention: bool = False, progress: Callable[[int], None] | None = None,
                    first_line: int = 1) -> list[Translation]:
    """`translator.translate(lines)` with `nbest` hypotheses each; with `rerank`, the beam's whole n-best
    list is rescored first (seq2seq-translate --lm-rerank) and the best `nbest` of it kept."""
    if rerank is None:
        return translator.translate(lines, nbest=nbest, with_attention=with_attention, progress=progress,
                                    first_line=first_line)
    results = translator.translate(lines, nbest=translator.cfg.beam_size, with_attention=with_attention,
                                   progress=progress, first_line=first_line)
    return [dataclasses.replace(r, nbest=r.nbest[:nbest]) for r in rerank(results)]


def translate_windows(translator: Translator, rerank: Rerank | None, source: Input, refs: Input | None,
                      skip: int, window: int, fmt: OutputFormat, write: Callable[[str], None],
                      progress: Callable[[int], None]) -> int:
    """Translate `source` after its first `skip` lines, `window` lines at a time (each window length-sorted
    into batches by the translator), writing each window's output, in input order, as it is done; with
    `refs`, the model's scores of those references instead. `progress(n)` hears of every n lines done.
    -> the target tokens written (0 with `refs`)."""
    lines = source.read(skip)
    ref_lines = refs.read(skip) if refs is not None else None
    first, n_tokens = skip, 0
    while True:
        window_lines = list(islice(lines, window))  # the previous window is released: one in memory at a time
        if not window_lines:
            break
        if ref_lines is not None:
            scores = translator.score_references(window_lines, list(islice(ref_lines, len(window_lines))),
                                                 first_line=first + 1)
            progress(len(window_lines))
            text = format_scores(first, scores, fmt)
        else:
            results = translate_lines(translator, window_lines, fmt.nbest, rerank, fmt.with_attention, progress,
                                      first_line=first + 1)
            text = "".join(format_line(first + i, t, fmt, translator) for i, t in enumerate(results))
            n_tokens += sum(t.length for t in results)
            if fmt.plot_dir and first < fmt.plot_limit:
                plot_attention(results, first, translator, fmt.plot_dir, fmt.plot_limit)
        write(text)
        first += len(window_lines)
        window_lines = results = scores = text = None  # noqa: F841 (released before the next window is read)
    return n_tokens


def translate_stream(translator: Translator, rerank: Rerank | None, lines: Iterator[str], fmt: OutputFormat,
                     write: Callable[[str], None]) -> tuple[int, int]:
    """Translate each line the moment it arrives and write its output before reading the next.
    -> (lines, target tokens) written."""
    n_lines, n_tokens = 0, 0
    for i, line in enumerate(lines):
        [t] = translate_lines(translator, [line], fmt.nbest, rerank, fmt.with_attention, first_line=i + 1)
        write(format_line(i, t, fmt, translator))
        if fmt.plot_dir and i < fmt.plot_limit:
            plot_attention([t], i, translator, fmt.plot_dir, fmt.plot_limit)
        n_lines, n_tokens = n_lines + 1, n_tokens + t.length
    return n_lines, n_tokens
