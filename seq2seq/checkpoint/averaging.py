"""The mean of several checkpoints' parameters: `seq2seq-average` (cli/average.py) and the end-of-training
`average_last` (training/average_last.py).

All inputs must have the same checkpoint format version, sentencepiece models, model config and
parameter names/shapes; otherwise an AverageError names the checkpoint that differs from the first.
Floating-point parameters are averaged (in float64, stored back in their own dtype); other tensors are
taken from the newest input. The result keeps the newest input's seq2seq payload (run config,
tokenizer) and step counters, plus `averaged_from` (the input paths). It has NO optimizer, scheduler
or loop state: it is for translation, not for resuming training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from seq2seq.checkpoint.format import PAYLOAD_KEY, read_checkpoint

# Top-level entries of a Lightning checkpoint that survive averaging; everything else (optimizer_states,
# lr_schedulers, loops, callbacks, precision plugin state, ...) describes one training moment only.
KEEP = ("epoch", "global_step", "pytorch-lightning_version", "hyper_parameters")


class AverageError(ValueError):
    """Inputs that cannot be averaged; the message names the input at fault (seq2seq-average: exit status 2)."""


def _step(ckpt: dict[str, Any]) -> int:
    step = ckpt.get("global_step")
    return int(step) if isinstance(step, int) else -1


def newest_checkpoints(folder: str | Path, n: int, exclude: Path | None = None) -> list[Path]:
    """The `n` newest checkpoints of `folder` by stored global_step, newest first (one per step)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise AverageError(f"--dir {folder} is not a folder")
    skip = exclude.resolve() if exclude is not None else None
    by_step: dict[int, Path] = {}
    for path in sorted(folder.glob("*.ckpt")):
        if path.name.startswith(".") or not path.is_file() or path.resolve() == skip:
            continue
        ckpt = read_checkpoint(path)
        if "averaged_from" in ckpt:
            continue  # an earlier average: not a training checkpoint
        step = _step(ckpt)
        del ckpt
        # Same step, same weights: keep one, preferring a name other than last/best (stable choice).
        if step not in by_step or by_step[step].stem in ("last", "best"):
            by_step[step] = path
    if len(by_step) < n:
        found = ", ".join(f"{p.name} (step {s})" for s, p in sorted(by_step.items())) or "none"
        raise AverageError(f"--last {n}: {folder} holds only {len(by_step)} checkpoint(s) from distinct "
                           f"training steps ({found}); train with callbacks=[default,periodic_checkpoint] "
                           "to keep one per epoch")
    return [by_step[s] for s in sorted(by_step, reverse=True)[:n]]


def _describe(x: Any) -> str:
    text = repr(x)
    return text if len(text) <= 200 else text[:200] + "..."


def _first_difference(a: Any, b: Any, where: str) -> str | None:
    """Where two plain containers first differ, as `key: a vs b`, or None if equal."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in list(a) + [k for k in b if k not in a]:
            if key not in a or key not in b:
                return f"{where}.{key}: {'missing' if key not in a else 'present'} in the first, " \
                       f"{'missing' if key not in b else 'present'} here"
            diff = _first_difference(a[key], b[key], f"{where}.{key}")
            if diff:
                return diff
        return None
    return None if a == b else f"{where}: {_describe(a)} in the first, {_describe(b)} here"


def check_compatible(first: dict[str, Any], first_path: Path, other: dict[str, Any], path: Path) -> None:
    """Raise AverageError naming `path` when it cannot be averaged with `first`."""
    pa, pb = first[PAYLOAD_KEY], other[PAYLOAD_KEY]
    prefix = f"{path} cannot be averaged with {first_path} (the first input)"
    if pa.get("format_version") != pb.get("format_version"):
        raise AverageError(f"{prefix}: checkpoint format version {pb.get('format_version')} vs "
                           f"{pa.get('format_version')}")
    if pa.get("tokenizer") != pb.get("tokenizer"):
        raise AverageError(f"{prefix}: it uses other sentencepiece models (a different vocabulary)")
    diff = _first_difference((pa.get("config") or {}).get("model"), (pb.get("config") or {}).get("model"),
                             "model")
    if diff:
        raise AverageError(f"{prefix}: its model config differs ({diff})")
    sa, sb = first["state_dict"], other["state_dict"]
    if set(sa) != set(sb):
        odd = sorted(set(sa) ^ set(sb))
        raise AverageError(f"{prefix}: its parameter names differ ({', '.join(odd[:5])}"
                           f"{', ...' if len(odd) > 5 else ''})")
    for key, value in sa.items():
        if not isinstance(value, torch.Tensor) or not isinstance(sb[key], torch.Tensor):
            continue
        if value.shape != sb[key].shape or value.dtype != sb[key].dtype:
            raise AverageError(f"{prefix}: parameter {key} is {tuple(sb[key].shape)} {sb[key].dtype}, "
                               f"expected {tuple(value.shape)} {value.dtype}")


def average(paths: Sequence[str | Path]) -> dict[str, Any]:
    """The averaged checkpoint (a plain dict ready for torch.save) of `paths`.

    The first path is the reference for compatibility; metadata comes from the newest input
    (highest global_step; the first among equals).
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise AverageError("no checkpoints to average")
    first = read_checkpoint(paths[0])
    sums = {k: v.to(torch.float64).clone() for k, v in first["state_dict"].items()
            if isinstance(v, torch.Tensor) and v.is_floating_point()}
    newest, newest_step = first, _step(first)
    for path in paths[1:]:
        ckpt = read_checkpoint(path)
        check_compatible(first, paths[0], ckpt, path)
        for key in sums:
            sums[key] += ckpt["state_dict"][key].to(torch.float64)
        if _step(ckpt) > newest_step:
            newest, newest_step = ckpt, _step(ckpt)
        else:
            del ckpt
    n = len(paths)
    state = {}
    for key, value in newest["state_dict"].items():
        if key in sums:
            state[key] = (sums[key] / n).to(value.dtype)
        else:
            state[key] = value  # integer buffers and the like: the newest input's
    out = {k: newest[k] for k in KEEP if k in newest}
    out["state_dict"] = state
    out[PAYLOAD_KEY] = newest[PAYLOAD_KEY]
    out["averaged_from"] = [str(p) for p in paths]
    return out
