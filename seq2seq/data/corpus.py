"""Reading, validating, cleaning and filtering parallel text; locating (or fetching) Multi30k.

Everything here works on plain Python strings: no tokenizer, no tensors. The contract:

* `read_lines(path)` returns one cleaned string per line of a plain or gzip file. Only ``\\n`` (with an
  optional preceding ``\\r``) ends a line, so the count equals ``wc -l`` plus one for an unterminated last
  line; the split can therefore never drift between the two sides of a corpus because of exotic
  separators (``\\u2028``, ``\\x1c``, ``\\x85`` ...), which ``str.splitlines`` would treat as line breaks.
* Invalid UTF-8 is fatal (`CorpusError` naming the file and the 1-based line); cosmetic damage is not:
  a BOM, CRLF, NUL and other control characters, runs of whitespace are normalised away.
* `find_corpus_files` looks in `data.root`, then each of `data.mirrors`, then (Multi30k only) downloads
  the public release into `data.root`, checking a SHA-256 of each decompressed file.
* `filter_pairs` decides which *training* pairs to keep and counts every drop by reason.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import re
import tempfile
import zlib
from pathlib import Path
from typing import BinaryIO, Iterator, Sequence

from seq2seq.config import DataConfig, FilterConfig
from seq2seq.temporaries import owned_prefix, remove_stale

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # parent of the seq2seq package folder

MULTI30K_URL = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw/"

# SHA-256 of the *decompressed* files of the public release (computed from the untouched copies in
# ../shared/data/multi30k). Hashing the content rather than the .gz bytes keeps the check valid if a
# server recompresses the files (gzip headers carry timestamps).
MULTI30K_SHA256 = {
    "test_2016_flickr.cs.gz": "45adb85f688de8407fddcbe1b36dca15d12aab868149b337e2576f2d6d2ff8d8",
    "test_2016_flickr.de.gz": "4be6b5b3236b79c25475c6bb829800a7ce559e9ba7a1f6c2394fe4d40be46d16",
    "test_2016_flickr.en.gz": "399a4382932c1aadd3ceb9bef1008d388a64c76d4ae4e9d4728c6f4301cac182",
    "test_2016_flickr.fr.gz": "cb3160d69b002bb638e66cc7612fcd56cb0af82eadc9c142dedc438afb885ef6",
    "train.cs.gz": "2be68b38c8d586ff4f54eb13cc6e1baaaa053695b3f070d3038303a47f2268da",
    "train.de.gz": "2c2b73fd2b548fbcde3a875e0a78d6ee94d498bfdee6bd3eae3945779e9ddf72",
    "train.en.gz": "460a15fbd157e34a7a9957ee388c1ca247fe47af3ef25fb50442af6c274e0fc6",
    "train.fr.gz": "5925a3c18f1587b6b54b87743106e6e8ab93618edb6f65d19eac0621f853a10d",
    "val.cs.gz": "d53827e469b0a1ca8d57e9e26b2b64c4bc4b33f5479c7b03ae87ae5c882c3e33",
    "val.de.gz": "660e09eb7e1da2f856ea13ee5ad3cf6d36b3d5b0b733c857e94c5747a3dfc660",
    "val.en.gz": "1f2a23d992769b5b3d209b0a10dd0b77c08cceb1f20dfb97ed0aafa49d107227",
    "val.fr.gz": "5304e444d842e962b2dda4d816b70b22a1765b15401642b7ca37a67477e708dc",
}

# Filter reasons, in the order they are tested: a pair is counted under the first reason that applies.
DROP_REASONS = ("empty", "too_long_chars", "too_long_tokens", "ratio")

_BOM = b"\xef\xbb\xbf"
# Control characters that act as whitespace (tab, lone CR, VT, FF, the C0 separators 0x1c-0x1f, NEL):
# they become a space so that words on either side are not glued together.
_SPACE_CONTROLS = re.compile("[\t\r\x0b\x0c\x1c-\x1f\x85]")
# Every other C0/C1 control (except \n, which separates lines), DEL, and stray BOMs / zero-width
# no-break spaces left behind where files were concatenated: removed.
_DROP_CONTROLS = re.compile("[\x00-\x08\x0e-\x1b\x7f-\x84\x86-\x9f\ufeff]")


class CorpusError(ValueError):
    """Unusable corpus data; the message names the file (and the line where one applies)."""


# --------------------------------------------------------------------------------------------- reading


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except FileNotFoundError:
        raise CorpusError(f"{path}: file not found") from None
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError; truncated gzip -> EOFError
        raise CorpusError(f"{path}: cannot read file ({e})") from None


def clean_text(text: str) -> str:
    """Normalise decoded text that may span several lines: CRLF -> LF, then `clean_line` on every line
    (controls, whitespace runs collapsed to single spaces, stripped). Newlines are kept."""
    return "\n".join(clean_line(line) for line in text.replace("\r\n", "\n").split("\n"))


def clean_line(text: str) -> str:
    """One line (no "\\n") cleaned: controls dropped or made spaces, whitespace runs collapsed to single
    spaces, stripped. Most lines hold no control character at all, and `str.isprintable` finds out in C
    (every character the two patterns match is non-printable)."""
    if not text.isprintable():
        text = _DROP_CONTROLS.sub("", _SPACE_CONTROLS.sub(" ", text))
    # str.split() with no argument splits on every Unicode whitespace (NBSP, U+2028, U+3000, ...);
    # none of these separate lines here, and sentencepiece's NFKC normalisation maps them to spaces anyway.
    return " ".join(text.split())


def read_lines(path: str | os.PathLike) -> list[str]:
    """Read a plain or .gz (by suffix) UTF-8 text file as a list of cleaned lines.

    Returns `n` strings where `n` = number of ``\\n`` bytes, plus one if the last line is unterminated
    (an empty file gives ``[]``). Lines may be empty after cleaning; callers decide what that means.
    Raises `CorpusError` (naming the file, and the 1-based line for invalid UTF-8).
    """
    path = Path(path)
    data = _read_bytes(path)
    if data.startswith(_BOM):
        data = data[len(_BOM):]
    try:
        text = data.decode("utf-8")  # strict: also rejects encoded surrogates and overlong forms
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise _utf8_error(path, line, column, data[e.start:e.end]) from None
    if not text:
        return []
    if text.endswith("\n"):
        text = text[:-1]  # a terminated last line does not start another one
    return clean_text(text).split("\n")


def _utf8_error(name: str | os.PathLike, line: int, column: int, bad: bytes) -> CorpusError:
    return CorpusError(f"{name}: line {line}: invalid UTF-8 (byte {column} of the line: {bad.hex(' ')}); "
                       "re-encode the file as UTF-8")


def _open_binary(path: Path) -> BinaryIO:
    """`path` opened for reading bytes, decompressed when its name ends in .gz."""
    try:
        return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")
    except FileNotFoundError:
        raise CorpusError(f"{path}: file not found") from None
    except OSError as e:
        raise CorpusError(f"{path}: cannot read file ({e})") from None


def _raw_lines(f: BinaryIO, name: str | os.PathLike) -> Iterator[bytes]:
    """The lines of a byte stream split as `read_lines` splits them (only b"\\n" ends a line), without
    their b"\\n" and without a leading BOM; read errors (a damaged .gz) name the file."""
    first = True
    try:
        for raw in f:  # binary iteration splits on b"\n" alone, and hands a line over as soon as it is there
            if first:
                first = False
                if raw.startswith(_BOM):
                    raw = raw[len(_BOM):]
                    if not raw:  # a file holding only a BOM is empty
                        return
            yield raw[:-1] if raw.endswith(b"\n") else raw
    except (OSError, EOFError, zlib.error) as e:
        raise CorpusError(f"{name}: cannot read file ({e})") from None


def iter_lines(path: str | os.PathLike | None = None, stream: BinaryIO | None = None, name: str | None = None,
               skip: int = 0) -> Iterator[str]:
    """`read_lines` one line at a time, in constant memory: the same cleaned strings, the same errors.

    Reads `path` (plain, or gzip by suffix) or an open binary `stream` (decompressed by the caller);
    `name` stands for it in errors (default: the path). The first `skip` lines are passed over
    without being decoded (a resumed job whose input was checked before).
    """
    if (path is None) == (stream is None):
        raise ValueError("iter_lines reads either a path or a stream")
    name = name or str(path)
    f = _open_binary(Path(path)) if stream is None else stream
    try:
        for number, raw in enumerate(_raw_lines(f, name), 1):
            if number <= skip:
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise _utf8_error(name, number, e.start + 1, raw[e.start:e.end]) from None
            yield clean_text(text)
    finally:
        if stream is None:
            f.close()


def scan_lines(path: str | os.PathLike, name: str | None = None) -> tuple[int, str]:
    """(line count, SHA-256 of its lines) of a file `read_lines` would accept, read in
    constant memory; `read_lines`' `CorpusError` (naming the file and line) otherwise."""
    name = name or str(path)
    digest = hashlib.sha256()
    count = 0
    with _open_binary(Path(path)) as f:
        for count, raw in enumerate(_raw_lines(f, name), 1):
            digest.update(raw + b"\n")
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise _utf8_error(name, count, e.start + 1, raw[e.start:e.end]) from None
    return count, digest.hexdigest()


def read_parallel(src_path: str | os.PathLike, tgt_path: str | os.PathLike) -> tuple[list[str], list[str]]:
    """Read two aligned files; returns (src_lines, tgt_lines) of equal length >= 1.

    Raises `CorpusError` for an empty file or differing line counts (naming both files and counts).
    """
    src = read_lines(src_path)
    tgt = read_lines(tgt_path)
    for path, lines in ((src_path, src), (tgt_path, tgt)):
        if not lines:
            raise CorpusError(f"{path}: file is empty")
    if len(src) != len(tgt):
        raise CorpusError(
            f"parallel files differ in line count: {src_path} has {len(src)} lines, "
            f"{tgt_path} has {len(tgt)} lines; lines must be aligned one to one"
        )
    return src, tgt


class ParallelLines:
    """The aligned lines of two files, read in step and in constant memory: (source, target) pairs of
    cleaned strings, as `read_parallel` would return them.

    Only the first `limit` pairs are cleaned and yielded (None: all); the rest are still read and checked
    (UTF-8 and line count), as `read_parallel` checks whole files. Raises `CorpusError` for an empty
    file, invalid UTF-8 (naming file and line) or differing line counts (naming both files and counts).
    After the iteration `read` holds the number of lines of each file.
    """

    def __init__(self, src_path: str | os.PathLike, tgt_path: str | os.PathLike, limit: int | None = None):
        self.paths = (Path(src_path), Path(tgt_path))
        self.limit = limit
        self.read = 0

    def __iter__(self) -> Iterator[tuple[str, str]]:
        names = [str(p) for p in self.paths]
        files = [_open_binary(p) for p in self.paths]
        try:
            lines = [_raw_lines(f, name) for f, name in zip(files, names)]
            number = 0
            while True:
                raw = [next(side, None) for side in lines]  # both read, so neither line is lost at the end
                if None in raw:
                    break
                number += 1
                text = []
                for side, name in zip(raw, names):
                    try:
                        text.append(side.decode("utf-8"))
                    except UnicodeDecodeError as e:
                        raise _utf8_error(name, number, e.start + 1, side[e.start:e.end]) from None
                if self.limit is None or number <= self.limit:
                    yield clean_line(text[0]), clean_line(text[1])
            # One file ended: the other may have lines left (counted, not kept).
            counts = [number + (last is not None) + sum(1 for _ in side) for last, side in zip(raw, lines)]
        finally:
            for f in files:
                f.close()
        for path, count in zip(self.paths, counts):
            if count == 0:
                raise CorpusError(f"{path}: file is empty")
        if counts[0] != counts[1]:
            raise CorpusError(
                f"parallel files differ in line count: {self.paths[0]} has {counts[0]} lines, "
                f"{self.paths[1]} has {counts[1]} lines (the shorter ends after line {number}); lines must be "
                "aligned one to one"
            )
        self.read = number


# ------------------------------------------------------------------------------------------- filtering


def drop_reason(src: str, tgt: str, cfg: FilterConfig, src_len: int | None = None,
                tgt_len: int | None = None) -> str | None:
    """Why the training pair (`src`, `tgt`) is dropped (the first of DROP_REASONS that applies), or None
    to keep it. Without piece counts only the `empty` and `too_long_chars` tests run."""
    if not src.strip() or not tgt.strip():
        return "empty"
    if len(src) > cfg.max_chars or len(tgt) > cfg.max_chars:
        return "too_long_chars"
    if src_len is None or tgt_len is None:
        return None
    longer, shorter = max(src_len, tgt_len), min(src_len, tgt_len)
    if longer > cfg.max_tokens:
        return "too_long_tokens"
    if longer / max(shorter, 1) > cfg.max_ratio:
        return "ratio"
    return None


def nothing_left_error(read: int, dropped: dict[str, int], names: Sequence[str]) -> CorpusError:
    where = " and ".join(str(n) for n in names) or "the corpus"
    counts = ", ".join(f"{k}={v}" for k, v in dropped.items() if v)
    return CorpusError(f"filtering dropped all {read} pairs of {where} ({counts}); check the files or loosen "
                       "data.filter.max_chars / max_tokens / max_ratio")


def filter_pairs(
    src: Sequence[str],
    tgt: Sequence[str],
    cfg: FilterConfig,
    src_len: Sequence[int] | None = None,
    tgt_len: Sequence[int] | None = None,
    names: Sequence[str] = (),
) -> tuple[list[int], dict[str, int]]:
    """Choose which pairs to keep.

    `src`/`tgt`: cleaned text, equal length N. `src_len`/`tgt_len`: optional piece counts per line
    (length N each); without them only the `empty` and `too_long_chars` tests run.
    Returns (kept_indices ascending, {reason: count} for every reason in DROP_REASONS); each dropped
    pair is counted once, under the first reason that applies. `names` (file names) only serve the
    error raised when nothing survives.
    """
    if len(src) != len(tgt):
        raise ValueError(f"filter_pairs: {len(src)} source lines but {len(tgt)} target lines")
    with_tokens = src_len is not None and tgt_len is not None
    if with_tokens and not (len(src_len) == len(tgt_len) == len(src)):
        raise ValueError("filter_pairs: src_len / tgt_len must have one entry per line")
    dropped = dict.fromkeys(DROP_REASONS, 0)
    kept = []
    for i, (s, t) in enumerate(zip(src, tgt)):
        reason = drop_reason(s, t, cfg, src_len[i], tgt_len[i]) if with_tokens else drop_reason(s, t, cfg)
        if reason is None:
            kept.append(i)
        else:
            dropped[reason] += 1
    if not kept:
        raise nothing_left_error(len(src), dropped, names)
    return kept, dropped


# -------------------------------------------------------------------------------------------- locating


def _candidates(folder: Path, split: str, lang: str) -> list[Path]:
    return [folder / f"{split}.{lang}", folder / f"{split}.{lang}.gz"]


def _find_in(folder: Path, split: str, lang: str) -> Path | None:
    for path in _candidates(folder, split, lang):
        if path.is_file():
            return path
    return None


def _search_folders(cfg: DataConfig) -> list[Path]:
    """root (as given, relative to the working folder), then each mirror: as given, then under the
    project root. Duplicates (after resolving) are dropped, the order is kept."""
    folders = [Path(cfg.root).expanduser()]
    for mirror in cfg.mirrors:
        m = Path(mirror).expanduser()
        folders.append(m)
        if not m.is_absolute():
            folders.append(PROJECT_ROOT / m)
    unique, seen = [], set()
    for f in folders:
        key = os.path.abspath(f)
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


def find_corpus_files(cfg: DataConfig, split: str) -> tuple[Path, Path]:
    """Return (src_path, tgt_path) of `split`, both from the same folder.

    Looks for `{split}.{lang}` then `{split}.{lang}.gz` in `cfg.root`, then in each of `cfg.mirrors`;
    then, for `corpus: multi30k` with `download: true`, fetches the public release into `cfg.root`.
    Raises `CorpusError` listing every folder searched and the file names expected.
    """
    langs = (cfg.src_lang, cfg.tgt_lang)
    folders = _search_folders(cfg)
    for folder in folders:
        found = [_find_in(folder, split, lang) for lang in langs]
        if all(found):
            return found[0], found[1]
    expected = " and ".join(
        "{" + ", ".join(p.name for p in _candidates(Path("."), split, lang)) + "}" for lang in langs
    )
    searched = "".join(f"\n  {os.path.abspath(f)}" for f in folders)
    if cfg.download and cfg.corpus == "multi30k":
        log.info("%s: %s not found locally; downloading the public Multi30k release into %s",
                 split, expected, cfg.root)
        root = Path(cfg.root).expanduser()
        try:
            paths = [_find_in(root, split, lang) or download_multi30k(root, split, lang) for lang in langs]
        except CorpusError as e:
            raise CorpusError(f"{e}\n(no folder had both {expected}; searched:{searched})") from None
        return paths[0], paths[1]
    hint = (" (download is off: set data.download=true)" if cfg.corpus == "multi30k"
            else " (download exists only for corpus 'multi30k')")
    raise CorpusError(
        f"cannot find the '{split}' split of corpus '{cfg.corpus}': expected both {expected} "
        f"in one of these folders:{searched}\nset data.root=/path/to/folder or add a folder to "
        f"data.mirrors{hint}"
    )


def find_train_corpora(cfg: DataConfig) -> list[tuple[str, Path, Path]]:
    """(name, src_path, tgt_path) of every training corpus: each entry of `data.train_corpora`, in order,
    or the one `train_split` of the corpus folder when that list is empty.

    An entry's path is a folder holding `{train_split}.{lang}[.gz]` or a prefix `p` of files `p.{lang}[.gz]`.
    Raises `CorpusError` naming the entry and the files it looked for.
    """
    if not cfg.train_corpora:
        return [(cfg.corpus, *find_corpus_files(cfg, cfg.train_split))]
    found = []
    for i, entry in enumerate(cfg.train_corpora):
        path = Path(entry.path).expanduser()
        if path.is_dir():
            pair = [_find_in(path, cfg.train_split, lang) for lang in (cfg.src_lang, cfg.tgt_lang)]
            expected = [f"{path / cfg.train_split}.{lang}[.gz]" for lang in (cfg.src_lang, cfg.tgt_lang)]
        else:
            pair = [_find_in(path.parent, path.name, lang) for lang in (cfg.src_lang, cfg.tgt_lang)]
            expected = [f"{path}.{lang}[.gz]" for lang in (cfg.src_lang, cfg.tgt_lang)]
        if not all(pair):
            missing = " and ".join(e for e, p in zip(expected, pair) if p is None)
            raise CorpusError(f"data.train_corpora[{i}] ({entry.label}): cannot find {missing} (path "
                              f"{os.path.abspath(path)}: a folder holding {cfg.train_split}.<lang>[.gz], or a file "
                              "prefix p of p.<lang>[.gz])")
        found.append((entry.label, pair[0], pair[1]))
    return found


# ------------------------------------------------------------------------------------------ downloading


def _fetch(url: str, timeout: float = 60.0) -> bytes:
    """GET `url` and return its body (separate so tests can replace it: no network in tests)."""
    import urllib.request  # here, not at the top: translation reads files and never downloads

    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


def download_multi30k(root: Path, split: str, lang: str) -> Path:
    """Fetch `{split}.{lang}.gz` of the public release into `root`; return its path.

    The decompressed content must match `MULTI30K_SHA256` (a file missing from the table is accepted
    with a warning). The file is written under a temporary name and renamed when complete, so an
    interrupted download never leaves a truncated file that a later run would trust.
    """
    name = f"{split}.{lang}.gz"
    url = MULTI30K_URL + name
    advice = "download it yourself, or set data.root=/path/to/folder or data.mirrors to a local copy"
    try:
        payload = _fetch(url)
    except Exception as e:  # urllib raises URLError, HTTPError, timeouts, ssl errors ...
        raise CorpusError(f"download of {url} failed ({e}); {advice}") from None
    try:
        content = gzip.decompress(payload)
    except (OSError, EOFError, zlib.error) as e:
        raise CorpusError(f"download of {url} failed: not a gzip file ({e}); {advice}") from None
    digest = hashlib.sha256(content).hexdigest()
    expected = MULTI30K_SHA256.get(name)
    if expected is None:
        log.warning("no checksum known for %s: accepting it unchecked", url)
    elif digest != expected:
        raise CorpusError(
            f"download of {url} failed: SHA-256 of the content is {digest}, expected {expected}; {advice}"
        )
    root.mkdir(parents=True, exist_ok=True)
    target = root / name
    remove_stale(root)  # downloads of killed runs
    fd, tmp = tempfile.mkstemp(dir=root, prefix=owned_prefix(name), suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the corpus is public data
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    log.info("downloaded %s -> %s", url, target)
    return target


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (as stored: a .gz file is hashed compressed)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
