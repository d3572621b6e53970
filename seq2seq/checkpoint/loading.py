"""Models out of checkpoints: a translation model (or several, for an ensemble) or a language model,
built from the config stored in the checkpoint and loaded with its weights, in eval mode.

    model, tokenizer, search_cfg, config = load_for_translation("best.ckpt", load_device("auto"))

What a checkpoint holds and how it is read is `checkpoint/format.py`; every error here is a
CheckpointError naming the file. The search config returned is the run's own (its search defaults,
tuned ones included: seq2seq-tune-search), which seq2seq-translate, seq2seq-serve and seq2seq-export use.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from seq2seq.checkpoint.format import (PAYLOAD_KEY, CheckpointError, is_language_model, model_state_dict,
                                      read_checkpoint)
from seq2seq.config import LanguageModelConfig, ModelConfig, SearchConfig, section
from seq2seq.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, Tokenizer
from seq2seq.model import Seq2Seq
from seq2seq.model.lm import RecurrentLM


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


def load_language_model(path: str | os.PathLike, device: torch.device | str = "cpu"):
    """-> (RecurrentLM in eval mode on `device`, tokenizer, full config dict) of an LM checkpoint."""
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
    model = RecurrentLM(model_cfg, vocab_size=tokenizer.tgt_vocab_size, pad_id=PAD_ID, bos_id=BOS_ID, eos_id=EOS_ID)
    try:
        model.load_state_dict(model_state_dict(ckpt))
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path}: its weights do not match its own config and vocabulary "
                              f"(vocab {tokenizer.tgt_vocab_size}):\n{e}") from None
    return model.to(device).eval(), tokenizer, config
