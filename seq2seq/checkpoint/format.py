"""What a checkpoint carries besides the weights, how it is written, and how it is read back.

A checkpoint is Lightning's own dictionary plus `checkpoint["seq2seq"]`, made only of plain
containers (so `torch.load(weights_only=True)` reads it): a format version, the resolved run config,
the sentencepiece model bytes and the special ids. `seq2seq-translate` needs nothing else.
Writes go to a temporary file in the same folder, then an atomic rename: a crash or kill during a
save leaves the previous checkpoint intact (Lightning's side of that is `checkpoint_io.py`).

Reading needs torch and this package only, never Lightning or Hydra: translation, scoring and
averaging start without the training stack. Checkpoints are memory-mapped, so the entries a
translation never touches (optimizer moments, twice the model's size under Adam) stay on disk.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from seq2seq.config import LM_TYPE, LanguageModelConfig, ModelConfig, SearchConfig, section
from seq2seq.model import Seq2Seq
from seq2seq.temporaries import owned_prefix
from seq2seq.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Tokenizer

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


def load_device(choice: str) -> torch.device:
    """The device a `--device {auto,cpu,cuda}` flag asks to load checkpoints on: 'auto' is the GPU when one is
    visible, else the CPU; 'cuda' without a visible GPU is a CheckpointError."""
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise CheckpointError("--device cuda was asked for, but no CUDA GPU is visible")
    return torch.device(choice)


def load_for_translation(path: str | os.PathLike, device: torch.device | str = "cpu"):
    """-> (model in eval mode on `device`, tokenizer, search config of the run, full config dict)."""
    ckpt = read_checkpoint(path)
    payload = ckpt[PAYLOAD_KEY]
    if is_language_model(payload):
        raise CheckpointError(f"checkpoint {path} is a language model, not a translation model: generate with "
                              f"seq2seq-generate --checkpoint {path}, or fuse it into translation with --lm {path}")
    try:
        config = payload["config"]
        tokenizer = Tokenizer.from_state_dict(payload["tokenizer"])
        model_cfg = section(ModelConfig, config["model"], "model")
        search_cfg = section(SearchConfig, config["search"], "search")
    except (KeyError, TypeError, ValueError) as e:  # ValueError: ConfigError, TokenizerError
        what = f"no {e} entry" if isinstance(e, KeyError) else str(e)
        raise CheckpointError(f"checkpoint {path}: its stored config or sentencepiece model is unusable "
                              f"({what})") from None
    model = Seq2Seq(model_cfg, src_vocab_size=tokenizer.src_vocab_size, tgt_vocab_size=tokenizer.tgt_vocab_size,
                    pad_id=PAD_ID, bos_id=BOS_ID, eos_id=EOS_ID)
    weights = model_state_dict(ckpt)  # memory-mapped: load_state_dict reads just these from disk
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path}: its weights do not match its own config and vocabulary "
                              f"(src vocab {tokenizer.src_vocab_size}, tgt vocab {tokenizer.tgt_vocab_size}):\n{e}") from None
    return model.to(device).eval(), tokenizer, search_cfg, config


def run_checkpoint(path: str | os.PathLike) -> Path:
    """A run folder's checkpoints/best.ckpt, or `path` itself when it is a checkpoint file (the members of
    scripts/ensemble_runs.py, the teachers of scripts/distill.py)."""
    path = Path(path)
    ckpt = path / "checkpoints" / "best.ckpt" if path.is_dir() else path
    if not ckpt.is_file():
        raise CheckpointError(f"{path}: no checkpoint at {ckpt} (give a run folder holding "
                              "checkpoints/best.ckpt, or a .ckpt file)")
    return ckpt


def load_members(paths: list[str | os.PathLike], device: torch.device | str = "cpu"):
    """-> (models, tokenizer, search config, full config) for an ensemble of translation checkpoints;
    the search and full config are the first member's. Every member must translate the same direction
    with the same sentencepiece model: a joint vocabulary serves both directions of a pair, so the
    tokenizer alone would let an en->de model into a de->en ensemble."""
    loaded = [load_for_translation(p, device) for p in paths]
    _, tokenizer, search_cfg, config = loaded[0]

    def direction(cfg: dict[str, Any]) -> tuple[Any, Any]:
        data = cfg.get("data") if isinstance(cfg.get("data"), dict) else {}
        return data.get("src_lang"), data.get("tgt_lang")

    for path, (_, tok, _, cfg) in zip(paths[1:], loaded[1:]):
        if tok.state_dict() != tokenizer.state_dict():
            raise CheckpointError(f"--ensemble: {path} uses another sentencepiece model than {paths[0]}")
        if direction(cfg) != direction(config):
            raise CheckpointError(f"--ensemble: {path} translates {'->'.join(map(str, direction(cfg)))}, "
                                  f"{paths[0]} translates {'->'.join(map(str, direction(config)))}")
    return [m for m, *_ in loaded], tokenizer, search_cfg, config


def is_language_model(payload: dict[str, Any]) -> bool:
    model = payload.get("config", {}).get("model") if isinstance(payload.get("config"), dict) else None
    return isinstance(model, dict) and model.get("type") == LM_TYPE


def load_language_model(path: str | os.PathLike, device: torch.device | str = "cpu"):
    """-> (RecurrentLM in eval mode on `device`, tokenizer, full config dict) of an LM checkpoint."""
    from seq2seq.model.lm import RecurrentLM

    ckpt = read_checkpoint(path)
    payload = ckpt[PAYLOAD_KEY]
    if not is_language_model(payload):
        raise CheckpointError(f"checkpoint {path} is a translation model, not a language model "
                              f"(train one with seq2seq-train experiment=lm_quickstart)")
    try:
        config = payload["config"]
        tokenizer = Tokenizer.from_state_dict(payload["tokenizer"])
        model_cfg = section(LanguageModelConfig, config["model"], "model")
    except (KeyError, TypeError, ValueError) as e:
        what = f"no {e} entry" if isinstance(e, KeyError) else str(e)
        raise CheckpointError(f"checkpoint {path}: its stored config or sentencepiece model is unusable "
                              f"({what})") from None
    model = RecurrentLM(model_cfg, vocab_size=tokenizer.tgt_vocab_size, pad_id=PAD_ID,
                                    bos_id=BOS_ID, eos_id=EOS_ID)
    try:
        model.load_state_dict(model_state_dict(ckpt))
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path}: its weights do not match its own config and vocabulary "
                              f"(vocab {tokenizer.tgt_vocab_size}):\n{e}") from None
    return model.to(device).eval(), tokenizer, config
