"""`init_from=<checkpoint>`: start a new training run from a checkpoint's weights only.

Everything else is new: optimiser moments, learning-rate schedule (warm-up included), step and epoch
counters, early-stopping and best-checkpoint history. The corpus may be another one. The checkpoint's
sentencepiece models are reused, since its embedding and output matrices are indexed by them: the new
corpus is encoded with them instead of training new ones.

The config must therefore describe the checkpoint's model and vocabulary: a differing model shape
(cell, sizes, layers, attention, ...) or vocabulary setting (language pair, `data.tokenizer.*`) is refused
before any data is read, naming every key that differs. Dropout may differ: it is not part of the
weights.

`data.tokenizer_from=<checkpoint>` reuses only the sentencepiece models (`checkpoint_tokenizer`, the
same vocabulary checks): a new model trained from scratch on the checkpoint's vocabulary, e.g. a
student distilled from that checkpoint's translations (seq2seq-distill) that can then be ensembled
with it.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import torch

from seq2seq.checkpoint.format import PAYLOAD_KEY, CheckpointError, model_state_dict, read_checkpoint
from seq2seq.config import SAMPLING_KEYS, ConfigError, DataConfig, ModelConfig, TokenizerConfig, section
from seq2seq.data.tokenizer import Tokenizer

# Model settings that do not change the weights' shapes or meaning.
FREE_MODEL_KEYS = ("dropout", "rnn_dropout")


def _differences(prefix: str, mine: Any, theirs: Any, skip: tuple[str, ...] = ()) -> list[str]:
    out = []
    for f in dataclasses.fields(mine):
        if f.name in skip:
            continue
        a, b = getattr(mine, f.name), getattr(theirs, f.name)
        if a != b:
            out.append(f"{prefix}.{f.name} is {a!r} here but {b!r} in the checkpoint")
    return out


def _read_vocabulary(path: str | os.PathLike, data: DataConfig) -> tuple[dict[str, Any], Tokenizer, list[str]]:
    """-> (the checkpoint, its sentencepiece models, how `data` differs from its language pair and
    vocabulary settings). Subword sampling may differ: it changes how the training text is segmented,
    not the vocabulary."""
    ckpt = read_checkpoint(path)
    payload = ckpt[PAYLOAD_KEY]
    try:
        theirs_data = payload["config"]["data"]
        theirs_tok = section(TokenizerConfig, theirs_data["tokenizer"], "data.tokenizer")
        tokenizer = Tokenizer.from_state_dict(payload["tokenizer"])
    except (KeyError, TypeError, ValueError) as e:  # ValueError: ConfigError, TokenizerError
        what = f"no {e} entry" if isinstance(e, KeyError) else str(e)
        raise CheckpointError(f"checkpoint {path}: its stored config or sentencepiece model is unusable "
                              f"({what})") from None
    mismatches = [f"data.{k} is {getattr(data, k)!r} here but {theirs_data.get(k)!r} in the checkpoint"
                  for k in ("src_lang", "tgt_lang") if getattr(data, k) != theirs_data.get(k)]
    mismatches += _differences("data.tokenizer", data.tokenizer, theirs_tok, skip=SAMPLING_KEYS)
    return ckpt, tokenizer, mismatches


def checkpoint_tokenizer(path: str | os.PathLike, data: DataConfig) -> Tokenizer:
    """`data.tokenizer_from`: the sentencepiece models of checkpoint `path`, after checking that `data`
    names its language pair and vocabulary settings. Raises ConfigError naming every differing key,
    CheckpointError for a file that is not a usable checkpoint."""
    try:
        _, tokenizer, mismatches = _read_vocabulary(path, data)
    except CheckpointError as e:
        raise CheckpointError(f"config key 'data.tokenizer_from': {e}") from None
    if mismatches:
        raise ConfigError(f"config key 'data.tokenizer_from': {path} cannot lend its sentencepiece models to "
                          "this run: " + "; ".join(mismatches) + ". Set these keys to the checkpoint's values "
                          "(e.g. the experiment it was trained with)")
    return tokenizer


def load_initial_weights(path: str | os.PathLike, data: DataConfig,
                         model: ModelConfig) -> tuple[Tokenizer, dict[str, torch.Tensor]]:
    """-> (the checkpoint's tokenizer, its Seq2Seq weights), after checking that `data` and `model`
    describe the checkpoint's vocabulary and model. Raises ConfigError naming every differing key,
    CheckpointError for a file that is not a usable checkpoint."""
    ckpt, tokenizer, vocabulary_mismatches = _read_vocabulary(path, data)
    try:
        theirs_model = section(ModelConfig, ckpt[PAYLOAD_KEY]["config"]["model"], "model")
    except (KeyError, TypeError, ValueError) as e:
        what = f"no {e} entry" if isinstance(e, KeyError) else str(e)
        raise CheckpointError(f"checkpoint {path}: its stored config is unusable ({what})") from None
    mismatches = _differences("model", model, theirs_model, skip=FREE_MODEL_KEYS) + vocabulary_mismatches
    if mismatches:
        raise ConfigError(f"config key 'init_from': {path} cannot start this run: " + "; ".join(mismatches)
                          + ". Fine-tuning keeps the checkpoint's model and sentencepiece vocabulary: set these "
                          "keys to the checkpoint's values (e.g. the experiment it was trained with)")
    return tokenizer, model_state_dict(ckpt)


def apply_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Copy `weights` into `model` (every parameter and buffer, nothing left over)."""
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise CheckpointError(f"config key 'init_from': the weights of {path} do not fit this model:\n{e}") from None
