"""What a checkpoint carries besides the weights, how it is written, and how it is read back.

A checkpoint is Lightning's own dictionary plus `checkpoint["seq2seq"]`, made only of plain
containers (so `torch.load(weights_only=True)` reads it): a format version, the resolved run config,
the sentencepiece model bytes and the special ids. `seq2seq-translate` needs nothing else.
Writes go to a temporary file in the same folder, then an atomic rename: a crash or kill during a
save leaves the previous checkpoint intact (Lightning's side of that is `training/checkpoint_io.py`).

Reading needs torch and this package only, never Lightning or Hydra: translation, scoring and
averaging start without the training stack. Checkpoints are memory-mapped, so the entries a
translation never touches (optimizer moments, twice the model's size under Adam) stay on disk.
Building a model from a checkpoint is `checkpoint/loading.py`.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from seq2seq.config import LM_TYPE
from seq2seq.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Tokenizer
from seq2seq.temporaries import owned_prefix

FORMAT_VERSION = 1
PAYLOAD_KEY = "seq2seq"
MODEL_PREFIX = "model."  # the LightningModule holds the Seq2Seq as `self.model`


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file."""


def special_ids() -> dict[str, int]:
    return {"pad": PAD_ID, "unk": UNK_ID, "bos": BOS_ID, "eos": EOS_ID}


def make_payload(config: dict[str, Any], tokenizer: Tokenizer) -> dict[str, Any]:
    """The plain-container part of a checkpoint that makes it self-contained."""
    return {
        "format_version": FORMAT_VERSION,
        "config": config,
        "tokenizer": tokenizer.state_dict(),
        "special_ids": special_ids(),
    }


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save into a temporary file beside `path`, fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=owned_prefix(path.name), suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint file and check its seq2seq payload; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        # mmap: tensors are read from disk only when used. torch's zip format allows it; the legacy
        # (pre-1.6) format does not, and is read whole.
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as e:  # truncated, corrupt or not a torch file at all
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(e).__name__}: {e}); "
                              "it is corrupt or not a checkpoint") from None
    payload = ckpt.get(PAYLOAD_KEY) if isinstance(ckpt, dict) else None
    if payload is None:
        raise CheckpointError(f"checkpoint {path} was not written by seq2seq-train (no '{PAYLOAD_KEY}' entry)")
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {version}; this seq2seq reads "
                              f"version {FORMAT_VERSION}. Translate it with the seq2seq release that wrote it.")
    if payload.get("special_ids") != special_ids():
        raise CheckpointError(f"checkpoint {path} uses special ids {payload.get('special_ids')}, "
                              f"expected {special_ids()}")
    if "state_dict" not in ckpt:
        raise CheckpointError(f"checkpoint {path} holds no weights ('state_dict' missing)")
    return ckpt


def model_state_dict(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The Seq2Seq weights out of a Lightning state dict."""
    return {k[len(MODEL_PREFIX):]: v for k, v in ckpt["state_dict"].items() if k.startswith(MODEL_PREFIX)}


def run_checkpoint(path: str | os.PathLike) -> Path:
    """A run folder's checkpoints/best.ckpt, or `path` itself when it is a checkpoint file (the members of
    seq2seq-ensemble, the teachers of seq2seq-distill)."""
    path = Path(path)
    ckpt = path / "checkpoints" / "best.ckpt" if path.is_dir() else path
    if not ckpt.is_file():
        raise CheckpointError(f"{path}: no checkpoint at {ckpt} (give a run folder holding "
                              "checkpoints/best.ckpt, or a .ckpt file)")
    return ckpt


def is_language_model(payload: dict[str, Any]) -> bool:
    """Whether a checkpoint's payload describes a language model (seq2seq-train experiment=lm_quickstart)."""
    model = payload.get("config", {}).get("model") if isinstance(payload.get("config"), dict) else None
    return isinstance(model, dict) and model.get("type") == LM_TYPE
