"""Typed views of the Hydra config sections.

Hydra already refuses a command-line override of a key that does not exist. These dataclasses catch
what it cannot: a mistyped key inside a YAML file, a value of the wrong type, and a choice outside
the valid options. Each error names the full key and lists what is valid, so a typo never vanishes.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

def _find_conf_dir() -> Path:
    """`conf/` at the top of a source checkout (editable installs), else the copy in the wheel."""
    here = Path(__file__).resolve().parent
    checkout = here.parent / "conf"
    return checkout if (checkout / "train.yaml").is_file() else here / "conf"


def __getattr__(name: str) -> Any:
    """`CONF_DIR`, with the resolvers its YAML files use registered first.

    Everything that composes the config asks for CONF_DIR first (the Hydra apps, tests, scripts), so
    registering here keeps omegaconf out of the imports of translation and scoring, which never
    compose a config (PEP 562 module __getattr__: called only for names not defined below).
    """
    if name == "CONF_DIR":
        register_resolvers()
        return _find_conf_dir()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


CELLS = ("rnn_tanh", "rnn_relu", "gru", "lstm")
ATTENTIONS = ("bahdanau", "luong_dot", "luong_general", "none")


class ConfigError(ValueError):
    """A config value that cannot be used; the message names the key at fault."""


def _check_type(key: str, value: Any, annotation: Any) -> Any:
    """Return `value` converted to `annotation` where that is lossless, else raise ConfigError."""
    origin = typing.get_origin(annotation)
    if origin is typing.Union:  # Optional[X]
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None:
            return None
        return _check_type(key, value, args[0])
    if annotation is Any:
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' must be a list, got {value!r}")
        (item,) = typing.get_args(annotation)[:1] or (Any,)
        return [_check_type(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"config key '{key}' must be a mapping, got {value!r}")
        return dict(value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}' must be true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}' must be an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"config key '{key}' must be a number, got {value!r}")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"config key '{key}' must be a string, got {value!r}")
    if dataclasses.is_dataclass(annotation):
        return section(annotation, value, key)
    return value


def section(cls: type, values: Mapping[str, Any] | None, prefix: str):
    """Build dataclass `cls` from a config mapping, naming `prefix.key` in every error."""
    if values is None:
        values = {}
    if hasattr(values, "items") and not isinstance(values, dict):
        from omegaconf import OmegaConf

        values = OmegaConf.to_container(values, resolve=True)
    if not isinstance(values, Mapping):
        raise ConfigError(f"config key '{prefix}' must be a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown config key '{prefix}.{unknown[0]}'; valid keys under '{prefix}': "
            + ", ".join(sorted(fields))
        )
    kwargs = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}"
        if name in values:
            kwargs[name] = _check_type(key, values[name], hints[name])
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"config key '{key}' is missing")
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate(prefix)
    return obj


def _choice(key: str, value: str, options: tuple[str, ...]) -> None:
    if value not in options:
        raise ConfigError(f"config key '{key}' is {value!r}; valid options: {', '.join(options)}")


def _positive(key: str, value: float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"config key '{key}' must be {'>= 0' if allow_zero else '> 0'}, got {value}")


@dataclass
class TokenizerConfig:
    model_type: str = "bpe"  # bpe | unigram | char (one piece per character: character-level models)
    vocab_size: int = 8000
    joint: bool = True  # one model for both languages, or one per side
    character_coverage: float = 1.0
    byte_fallback: bool = True
    max_sentences: int = 0  # sentences sampled for training sentencepiece; 0 = all
    seed: int = 1

    def validate(self, prefix: str) -> None:
        _choice(f"{prefix}.model_type", self.model_type, ("bpe", "unigram", "char"))
        if self.vocab_size < 8:
            raise ConfigError(f"config key '{prefix}.vocab_size' must be >= 8, got {self.vocab_size}")
        _positive(f"{prefix}.max_sentences", self.max_sentences, allow_zero=True)
        if not 0.0 < self.character_coverage <= 1.0:
            raise ConfigError(f"config key '{prefix}.character_coverage' must be in (0, 1]")


@dataclass
class FilterConfig:
    max_chars: int = 1000  # drop training pairs with a side longer than this many characters
    max_tokens: int = 128  # ... or longer than this many sentencepiece pieces
    max_ratio: float = 3.0  # ... or whose piece-length ratio (longer / shorter) exceeds this

    def validate(self, prefix: str) -> None:
        _positive(f"{prefix}.max_chars", self.max_chars)
        _positive(f"{prefix}.max_tokens", self.max_tokens)
        if self.max_ratio < 1.0:
            raise ConfigError(f"config key '{prefix}.max_ratio' must be >= 1, got {self.max_ratio}")


@dataclass
class DataConfig:
    corpus: str = "multi30k"  # name: cache folder and messages; 'multi30k' enables download
    root: str = "data/multi30k"  # folder holding {split}.{lang}[.gz]
    mirrors: list[str] = field(default_factory=list)  # local copies tried after root
    download: bool = True  # fetch the public release when neither root nor a mirror has it
    src_lang: str = "de"
    tgt_lang: str = "en"
    train_split: str = "train"
    valid_split: str = "val"
    test_split: str = "test_2016_flickr"
    cache_dir: str = "data/cache"
    max_train_pairs: int = 0  # use only the first N training pairs (0 = all): quick runs, tests
    max_valid_pairs: int = 0  # likewise for validation
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)

    def validate(self, prefix: str) -> None:
        _positive(f"{prefix}.max_train_pairs", self.max_train_pairs, allow_zero=True)
        _positive(f"{prefix}.max_valid_pairs", self.max_valid_pairs, allow_zero=True)
        if self.src_lang == self.tgt_lang:
            raise ConfigError(f"config keys '{prefix}.src_lang' and '{prefix}.tgt_lang' are equal")


@dataclass
class BatchingConfig:
    max_tokens: int = 4096  # token budget per batch (padded size of the longer side)
    max_sentences: int = 0  # cap on sentences per batch; 0 = none
    bucket_width: int = 1  # lengths within this many tokens share a bucket
    num_workers: int = 0
    pin_memory: bool = False

    def validate(self, prefix: str) -> None:
        _positive(f"{prefix}.max_tokens", self.max_tokens)
        _positive(f"{prefix}.bucket_width", self.bucket_width)
        _positive(f"{prefix}.max_sentences", self.max_sentences, allow_zero=True)
        _positive(f"{prefix}.num_workers", self.num_workers, allow_zero=True)


@dataclass
class ModelConfig:
    cell: str = "lstm"
    embedding_size: int = 256
    encoder_hidden_size: int = 256  # per direction
    decoder_hidden_size: int = 512
    encoder_layers: int = 2
    decoder_layers: int = 1
    bidirectional: bool = True
    attention: str = "luong_general"
    attention_size: int = 256  # hidden size of the additive (bahdanau) scorer
    input_feed: bool = False
    bridge: bool = True  # initialise the decoder from the encoder's final states (else zeros)
    dropout: float = 0.3  # on embeddings and decoder outputs
    rnn_dropout: float = 0.3  # between stacked RNN layers
    tie_embeddings: bool = True  # output projection shares the target embedding matrix

    def validate(self, prefix: str) -> None:
        _choice(f"{prefix}.cell", self.cell, CELLS)
        _choice(f"{prefix}.attention", self.attention, ATTENTIONS)
        if self.input_feed and self.attention == "none":
            raise ConfigError(f"config key '{prefix}.input_feed' is true but '{prefix}.attention' is none")
        if self.attention == "none" and not self.bridge:
            raise ConfigError(f"config keys '{prefix}.attention=none' and '{prefix}.bridge=false' leave the "
                              "decoder blind to the source; enable one of them")
        for key in ("embedding_size", "encoder_hidden_size", "decoder_hidden_size",
                    "encoder_layers", "decoder_layers", "attention_size"):
            _positive(f"{prefix}.{key}", getattr(self, key))
        for key in ("dropout", "rnn_dropout"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ConfigError(f"config key '{prefix}.{key}' must be in [0, 1)")


LM_TYPE = "rnn_lm"  # `model.type` of a language model (a translation model's section has no `type`)


@dataclass
class LanguageModelConfig:
    """A decoder-only recurrent language model (`seq2seq.model.lm.RecurrentLM`)."""

    type: str = LM_TYPE
    cell: str = "lstm"
    embedding_size: int = 256
    hidden_size: int = 512
    layers: int = 2
    dropout: float = 0.3  # on embeddings and on the RNN's top-layer outputs
    rnn_dropout: float = 0.3  # between stacked RNN layers
    tie_embeddings: bool = True  # output projection shares the embedding matrix

    def validate(self, prefix: str) -> None:
        _choice(f"{prefix}.type", self.type, (LM_TYPE,))
        _choice(f"{prefix}.cell", self.cell, CELLS)
        for key in ("embedding_size", "hidden_size", "layers"):
            _positive(f"{prefix}.{key}", getattr(self, key))
        for key in ("dropout", "rnn_dropout"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ConfigError(f"config key '{prefix}.{key}' must be in [0, 1)")


@dataclass
class MonolingualDataConfig:
    """Monolingual text for a language model: Multi30k's `{split}.{lang}` files, or files of your own."""

    type: str = "monolingual"
    corpus: str = "multi30k"  # names the cache folder; 'multi30k' also enables the download
    lang: str = "en"  # language suffix of the Multi30k files ({split}.{lang}[.gz])
    root: str = "data/multi30k"
    mirrors: list[str] = field(default_factory=list)
    download: bool = True
    train_split: str = "train"
    valid_split: str = "val"
    test_split: str = "test_2016_flickr"  # '' = no test
    train_files: list[str] = field(default_factory=list)  # text files (plain or .gz) instead of the splits
    valid_files: list[str] = field(default_factory=list)
    test_files: list[str] = field(default_factory=list)
    valid_holdout: int = 500  # train_files without valid_files: the last N training lines validate
    cache_dir: str = "data/cache"
    max_train_lines: int = 0  # use only the first N training lines (0 = all)
    max_valid_lines: int = 0
    max_chars: int = 1000  # drop training lines longer than this many characters
    max_tokens: int = 256  # ... or than this many sentencepiece pieces
    tokenizer_from: str = ""  # a translation checkpoint (or .model file) whose target sentencepiece model to use
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)

    def validate(self, prefix: str) -> None:
        _choice(f"{prefix}.type", self.type, ("monolingual",))
        for key in ("valid_holdout", "max_train_lines", "max_valid_lines"):
            _positive(f"{prefix}.{key}", getattr(self, key), allow_zero=True)
        for key in ("max_chars", "max_tokens"):
            _positive(f"{prefix}.{key}", getattr(self, key))
        if self.valid_files and not self.train_files:
            raise ConfigError(f"config key '{prefix}.valid_files' is set but '{prefix}.train_files' is empty; "
                              "give both, or neither (the Multi30k splits)")
        if self.train_files and not self.valid_files and self.valid_holdout < 1:
            raise ConfigError(f"config key '{prefix}.valid_holdout' is 0 and '{prefix}.valid_files' is empty: "
                              "a language model needs validation text")


@dataclass
class SearchConfig:
    beam_size: int = 1  # 1 = greedy
    length_penalty: float = 1.0  # hypotheses ranked by score / length ** length_penalty
    max_len_a: int = 10  # maximum output length = a + b * source length
    max_len_b: float = 1.5
    batch_tokens: int = 8192  # source-token budget per translation batch
    max_src_tokens: int = 250  # longer inputs are truncated (with a warning)

    def validate(self, prefix: str) -> None:
        _positive(f"{prefix}.beam_size", self.beam_size)
        _positive(f"{prefix}.batch_tokens", self.batch_tokens)
        _positive(f"{prefix}.max_src_tokens", self.max_src_tokens)
        for key in ("length_penalty", "max_len_a", "max_len_b"):
            _positive(f"{prefix}.{key}", getattr(self, key), allow_zero=True)


@dataclass
class OptimConfig:
    name: str = "adam"  # adam | adamw
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    weight_decay: float = 0.0
    label_smoothing: float = 0.1

    def validate(self, prefix: str) -> None:
        _choice(f"{prefix}.name", self.name, ("adam", "adamw"))
        _positive(f"{prefix}.lr", self.lr)
        if len(self.betas) != 2:
            raise ConfigError(f"config key '{prefix}.betas' must hold two numbers")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"config key '{prefix}.label_smoothing' must be in [0, 1)")


@dataclass
class SchedulerConfig:
    name: str = "warmup_decay"  # warmup_decay | plateau | constant
    warmup_steps: int = 500  # warmup_decay: linear warm-up steps ...
    decay: str = "inverse_sqrt"  # ... then inverse_sqrt | linear | cosine | none
    total_steps: int = 0  # linear/cosine decay horizon (0 = trainer.max_steps)
    min_lr: float = 0.0
    plateau_factor: float = 0.5  # plateau: multiply lr by this ...
    plateau_patience: int = 2  # ... after this many validations without improvement

    def validate(self, prefix: str) -> None:
        _choice(f"{prefix}.name", self.name, ("warmup_decay", "plateau", "constant"))
        _choice(f"{prefix}.decay", self.decay, ("inverse_sqrt", "linear", "cosine", "none"))
        for key in ("warmup_steps", "total_steps", "min_lr", "plateau_patience"):
            _positive(f"{prefix}.{key}", getattr(self, key), allow_zero=True)
        if not 0.0 < self.plateau_factor <= 1.0:
            raise ConfigError(f"config key '{prefix}.plateau_factor' must be in (0, 1], got {self.plateau_factor}")


@dataclass
class ValidationConfig:
    metric: str = "bleu"  # monitored by best.ckpt, early stopping and the plateau scheduler
    max_sentences: int = 0  # decode only the first N validation sentences (0 = all)

    def validate(self, prefix: str) -> None:
        _choice(f"{prefix}.metric", self.metric, tuple(METRIC_MODES))


# Monitored metric -> logged name and direction.
METRIC_MODES = {"bleu": "max", "chrf": "max", "ter": "min", "ppl": "min", "loss": "min"}


def metric_key(metric: str) -> str:
    return f"val/{metric}"


def register_resolvers() -> None:
    """`${metric_mode:bleu}` -> 'max': checkpoint and early-stopping direction follow validation.metric."""
    from omegaconf import OmegaConf

    def metric_mode(metric: str) -> str:
        if metric not in METRIC_MODES:
            raise ConfigError(
                f"config key 'validation.metric' is {metric!r}; valid options: {', '.join(METRIC_MODES)}"
            )
        return METRIC_MODES[metric]

    OmegaConf.register_new_resolver("metric_mode", metric_mode, replace=True)
