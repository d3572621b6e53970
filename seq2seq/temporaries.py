"""Hidden temporary files and folders that name their owner, and the removal of those left by dead owners.

Atomic writes (checkpoints, cache builds, downloads) go to a hidden temporary beside their target and
are renamed into place when complete. A process killed meanwhile (SIGKILL, out of memory, a cluster
time limit) leaves its temporary behind. Each such name carries the owner's process id and host,
`.{target}.{pid}@{host}~{random}{suffix}`, so the next run can remove exactly those whose owner no
longer runs on this host, and never a write in progress (another run's, or another node's on a shared
file system).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
from pathlib import Path

log = logging.getLogger(__name__)

_OWNED = re.compile(r"^\..+\.(?P<pid>\d+)@(?P<host>[^~/]+)~")


def owned_prefix(target: str) -> str:
    """The start of a hidden temporary name for `target`, owned by this process (for tempfile's `prefix`)."""
    return f".{target}.{os.getpid()}@{socket.gethostname()}~"


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)  # signal 0: nothing is sent, the call only checks that the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def remove_stale(folder: str | os.PathLike) -> list[Path]:
    """Remove the owner-named temporaries in `folder` whose owner, on this host, no longer runs.
    -> the paths removed. A temporary of another host, of a live process, or without an owner in its
    name is left alone."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    host = socket.gethostname()
    removed = []
    for path in folder.iterdir():
        match = _OWNED.match(path.name)
        if not match or match["host"] != host or _alive(int(match["pid"])):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        log.info("removed %s, left by process %s, which no longer runs", path, match["pid"])
        removed.append(path)
    return removed


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """`text` (UTF-8) written to an owner-named temporary beside `path`, then renamed over it: a reader
    never sees half a file, and a killed writer leaves only a temporary that `remove_stale` removes."""
    import tempfile

    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=owned_prefix(path.name), suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
