"""The config schema: one dataclass per section of the training config, and what checks them.

`TrainConfig` is registered with Hydra's ConfigStore as `train_schema`, the first entry of train.yaml's
defaults list, and each `data` and `model` option names its own schema first (GROUP_SCHEMAS), so every
composed config is typed: Hydra itself rejects an unknown key (on the command
line or in a YAML file), a value of the wrong type and a choice outside its enum, before anything runs.
The schema Hydra sees has every value `???`: the YAML files under conf/ hold the values (each with its
comment), and a key they leave out is an error, not a silent default. The dataclass defaults below
serve Python callers (tests, library users) and checkpoints written before a key existed.

What a type cannot say (ranges, settings that exclude each other) is in each dataclass's `check`,
run by `section()`, which turns a composed section or a plain dict (a checkpoint's stored config)
into its dataclass. Every error names the full key and lists what is valid. This module imports
neither Hydra nor omegaconf at import time: translation reads checkpoints without them.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import sys
import typing
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional


def _find_conf_dir() -> Path:
    """`conf/` at the top of a source checkout (editable installs), else the copy in the wheel."""
    here = Path(__file__).resolve().parent
    checkout = here.parent / "conf"
    return checkout if (checkout / "train.yaml").is_file() else here / "conf"


def __getattr__(name: str) -> Any:
    """`CONF_DIR`, with the schema and the resolvers its YAML files use registered first.

    Everything that composes the config asks for CONF_DIR first (the Hydra apps, tests, scripts), so
    registering here keeps Hydra and omegaconf out of the imports of translation and scoring, which
    never compose a config (PEP 562 module __getattr__: called only for names not defined below).
    """
    if name == "CONF_DIR":
        register_configs()
        return _find_conf_dir()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class ConfigError(ValueError):
    """A config value that cannot be used; the message names the key at fault."""


class Choice(str, enum.Enum):
    """A setting with a fixed set of values (Hydra rejects any other); compares equal to its string."""

    def __str__(self) -> str:
        return self.value

    @classmethod
    def options(cls) -> str:
        return ", ".join(member.value for member in cls)


def _choice(name: str, *values: str) -> Any:
    return Choice(name, [(v, v) for v in values], module=__name__, qualname=name)


Cell = _choice("Cell", "rnn_tanh", "rnn_relu", "gru", "lstm")
Attention = _choice("Attention", "bahdanau", "luong_dot", "luong_general", "none")
PieceModel = _choice("PieceModel", "bpe", "unigram", "char")  # char: one piece per character
Optimizer = _choice("Optimizer", "adam", "adamw")
Schedule = _choice("Schedule", "warmup_decay", "plateau", "constant")
Decay = _choice("Decay", "inverse_sqrt", "linear", "cosine", "none")
# Monitored metric (validation.metric) -> direction of improvement (best.ckpt, early stopping, plateau).
METRIC_MODES = {"bleu": "max", "chrf": "max", "ter": "min", "ppl": "min", "loss": "min"}
Metric = _choice("Metric", *METRIC_MODES)

CELLS = tuple(c.value for c in Cell)
ATTENTIONS = tuple(a.value for a in Attention)


SAMPLING_KEYS = ("sampling_alpha", "sampling_nbest", "sampling_draws")  # TokenizerConfig keys that change no prepared output


def _positive(key: str, value: float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"config key '{key}' must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def _fraction(key: str, value: float) -> None:
    """A probability-like setting (dropout, smoothing): 0 <= value < 1."""
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"config key '{key}' must be in [0, 1)")


# Choice fields hold plain strings at run time (checkpoints store them as such); the enum in the
# annotation is the list of valid values that Hydra and `check_section` enforce.


@dataclass
class TokenizerConfig:
    model_type: PieceModel = PieceModel.bpe.value
    vocab_size: int = 8000
    joint: bool = True
    character_coverage: float = 1.0
    byte_fallback: bool = True
    max_sentences: int = 1_000_000
    seed: int = 1
    # Subword regularisation of the training split (seq2seq/data/subword_sampling.py); they change no cached
    # output, so the cache key leaves them out (SAMPLING_KEYS).
    sampling_alpha: float = 0.0
    sampling_nbest: int = -1
    sampling_draws: int = 8

    def check(self, prefix: str) -> None:
        if self.vocab_size < 8:
            raise ConfigError(f"config key '{prefix}.vocab_size' must be >= 8, got {self.vocab_size}")
        _positive(f"{prefix}.max_sentences", self.max_sentences, allow_zero=True)
        if not 0.0 < self.character_coverage <= 1.0:
            raise ConfigError(f"config key '{prefix}.character_coverage' must be in (0, 1]")
        self.check_sampling(prefix)

    @property
    def sampling(self) -> bool:
        """Whether the training split is re-segmented by sampling every epoch."""
        return self.sampling_alpha > 0.0

    def check_sampling(self, prefix: str) -> None:
        alpha, nbest = self.sampling_alpha, self.sampling_nbest
        _positive(f"{prefix}.sampling_draws", self.sampling_draws)
        if alpha < 0.0 or alpha != alpha:
            raise ConfigError(f"config key '{prefix}.sampling_alpha' must be >= 0 (0 = no sampling), got {alpha}")
        if not self.sampling:
            return
        if self.model_type == PieceModel.char.value:
            raise ConfigError(f"config key '{prefix}.sampling_alpha' is {alpha}, but '{prefix}.model_type' is char, "
                              "which has one segmentation only; use bpe or unigram, or sampling_alpha=0")
        if self.model_type == PieceModel.bpe.value and alpha >= 1.0:
            raise ConfigError(f"config key '{prefix}.sampling_alpha' is {alpha}: for bpe it is the probability of "
                              "dropping each merge (BPE-dropout) and must be in [0, 1); 0.1 is usual")
        if nbest != -1 and not 2 <= nbest <= 512:
            raise ConfigError(f"config key '{prefix}.sampling_nbest' is {nbest}; valid: -1 (sample from every "
                              "segmentation) or 2..512 (from the n best; unigram only, bpe ignores it)")


@dataclass
class FilterConfig:
    max_chars: int = 1000
    max_tokens: int = 128
    max_ratio: float = 3.0

    def check(self, prefix: str) -> None:
        _positive(f"{prefix}.max_chars", self.max_chars)
        _positive(f"{prefix}.max_tokens", self.max_tokens)
        if self.max_ratio < 1.0:
            raise ConfigError(f"config key '{prefix}.max_ratio' must be >= 1, got {self.max_ratio}")


@dataclass
class TrainCorpusConfig:
    """One training corpus of several (`data.train_corpora`): a folder holding `{train_split}.{lang}[.gz]`
    or a file prefix `p` (files `p.{lang}[.gz]`); `weight` scales its pairs per epoch; `name` (default:
    the folder's or prefix's base name) names it in the cache and the logs."""

    path: str = ""
    weight: float = 1.0
    name: str = ""

    def check(self, prefix: str) -> None:
        if not self.path:
            raise ConfigError(f"config key '{prefix}.path' is empty: name a folder or a file prefix")
        _positive(f"{prefix}.weight", self.weight, allow_zero=True)

    @property
    def label(self) -> str:
        return self.name or Path(self.path.rstrip("/")).name


@dataclass
class DataConfig:
    corpus: str = "multi30k"
    root: str = "data/multi30k"
    mirrors: list[str] = field(default_factory=list)
    download: bool = True
    src_lang: str = "de"
    tgt_lang: str = "en"
    train_split: str = "train"
    train_corpora: list[TrainCorpusConfig] = field(default_factory=list)
    valid_split: str = "val"
    test_split: str = "test_2016_flickr"
    test_splits: list[str] = field(default_factory=list)
    cache_dir: str = "data/cache"
    max_train_pairs: int = 0
    max_valid_pairs: int = 0
    tokenizer_from: str = ""
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)

    def check(self, prefix: str) -> None:
        _positive(f"{prefix}.max_train_pairs", self.max_train_pairs, allow_zero=True)
        _positive(f"{prefix}.max_valid_pairs", self.max_valid_pairs, allow_zero=True)
        if self.src_lang == self.tgt_lang:
            raise ConfigError(f"config keys '{prefix}.src_lang' and '{prefix}.tgt_lang' are equal")
        for i, corpus in enumerate(self.train_corpora):
            corpus.check(f"{prefix}.train_corpora[{i}]")
        labels = [c.label for c in self.train_corpora]
        repeated = sorted({label for label in labels if labels.count(label) > 1})
        if repeated:
            raise ConfigError(f"config key '{prefix}.train_corpora' names {repeated[0]!r} twice; give each entry "
                              "a distinct name (its 'name' key)")
        if self.train_corpora and not any(c.weight > 0 for c in self.train_corpora):
            raise ConfigError(f"config key '{prefix}.train_corpora': every weight is 0, nothing would be trained on")


@dataclass
class BatchingConfig:
    max_tokens: int = 4096
    max_sentences: int = 0
    bucket_width: int = 1
    num_workers: int = 0
    pin_memory: bool = False

    def check(self, prefix: str) -> None:
        _positive(f"{prefix}.max_tokens", self.max_tokens)
        _positive(f"{prefix}.bucket_width", self.bucket_width)
        _positive(f"{prefix}.max_sentences", self.max_sentences, allow_zero=True)
        _positive(f"{prefix}.num_workers", self.num_workers, allow_zero=True)


@dataclass
class ModelConfig:
    cell: Cell = Cell.lstm.value
    embedding_size: int = 256
    encoder_hidden_size: int = 256
    decoder_hidden_size: int = 512
    encoder_layers: int = 2
    decoder_layers: int = 1
    bidirectional: bool = True
    attention: Attention = Attention.luong_general.value
    attention_size: int = 256
    input_feed: bool = False
    bridge: bool = True
    dropout: float = 0.3
    rnn_dropout: float = 0.3
    word_dropout: float = 0.0
    tie_embeddings: bool = True
    share_embeddings: bool = False

    def check(self, prefix: str) -> None:
        if self.input_feed and self.attention == "none":
            raise ConfigError(f"config key '{prefix}.input_feed' is true but '{prefix}.attention' is none")
        if self.attention == "none" and not self.bridge:
            raise ConfigError(f"config keys '{prefix}.attention=none' and '{prefix}.bridge=false' leave the "
                              "decoder blind to the source; enable one of them")
        for key in ("embedding_size", "encoder_hidden_size", "decoder_hidden_size",
                    "encoder_layers", "decoder_layers", "attention_size"):
            _positive(f"{prefix}.{key}", getattr(self, key))
        for key in ("dropout", "rnn_dropout", "word_dropout"):
            _fraction(f"{prefix}.{key}", getattr(self, key))


LM_TYPE = "rnn_lm"  # `model.type` of a language model (a translation model's section has no `type`)
LmType = _choice("LmType", LM_TYPE)
MonolingualType = _choice("MonolingualType", "monolingual")


@dataclass
class LanguageModelConfig:
    """A decoder-only recurrent language model (`seq2seq.model.lm.RecurrentLM`)."""

    type: LmType = LM_TYPE
    cell: Cell = Cell.lstm.value
    embedding_size: int = 256
    hidden_size: int = 512
    layers: int = 2
    dropout: float = 0.3
    rnn_dropout: float = 0.3
    tie_embeddings: bool = True

    def check(self, prefix: str) -> None:
        for key in ("embedding_size", "hidden_size", "layers"):
            _positive(f"{prefix}.{key}", getattr(self, key))
        for key in ("dropout", "rnn_dropout"):
            _fraction(f"{prefix}.{key}", getattr(self, key))


@dataclass
class MonolingualDataConfig:
    """Monolingual text for a language model: Multi30k's `{split}.{lang}` files, or files of your own."""

    type: MonolingualType = "monolingual"
    corpus: str = "multi30k"
    lang: str = "en"
    root: str = "data/multi30k"
    mirrors: list[str] = field(default_factory=list)
    download: bool = True
    train_split: str = "train"
    valid_split: str = "val"
    test_split: str = "test_2016_flickr"
    train_files: list[str] = field(default_factory=list)
    valid_files: list[str] = field(default_factory=list)
    test_files: list[str] = field(default_factory=list)
    valid_holdout: int = 500
    cache_dir: str = "data/cache"
    max_train_lines: int = 0
    max_valid_lines: int = 0
    max_chars: int = 1000
    max_tokens: int = 256
    tokenizer_from: str = ""
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)

    def check(self, prefix: str) -> None:
        if self.tokenizer.sampling:
            raise ConfigError(f"config key '{prefix}.tokenizer.sampling_alpha' is {self.tokenizer.sampling_alpha}, "
                              "but a language model trains on one fixed segmentation; set it to 0")
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
    beam_size: int = 1
    length_penalty: float = 1.0
    max_len_a: int = 10
    max_len_b: float = 1.5
    min_len: int = 0
    batch_tokens: int = 8192
    max_src_tokens: int = 250
    tune_beam_sizes: list[int] = field(default_factory=lambda: [1, 5, 10])
    tune_length_penalties: list[float] = field(default_factory=lambda: [0.6, 0.8, 1.0, 1.2, 1.4])

    def check(self, prefix: str) -> None:
        _positive(f"{prefix}.beam_size", self.beam_size)
        _positive(f"{prefix}.batch_tokens", self.batch_tokens)
        _positive(f"{prefix}.max_src_tokens", self.max_src_tokens)
        for key in ("length_penalty", "max_len_a", "max_len_b", "min_len"):
            _positive(f"{prefix}.{key}", getattr(self, key), allow_zero=True)
        check_search_grid(self.tune_beam_sizes, self.tune_length_penalties,
                          f"config key '{prefix}.tune_beam_sizes'", f"config key '{prefix}.tune_length_penalties'")


def check_search_grid(beam_sizes: Any, length_penalties: Any, beam_key: str, lp_key: str) -> None:
    """The grid of seq2seq-tune-search; errors begin with `beam_key` or `lp_key` (what names the list:
    a config key, a command-line option)."""
    check_grid_values(beam_sizes, beam_key, integers=True)
    check_grid_values(length_penalties, lp_key, integers=False)


def check_grid_values(values: Any, key: str, integers: bool) -> None:
    """A non-empty list of distinct integers >= 1 (beam sizes) or numbers >= 0 (length penalties)."""
    what = "integers >= 1" if integers else "numbers >= 0"
    if not isinstance(values, (list, tuple)) or not values:
        raise ConfigError(f"{key} must be a non-empty list of {what}, got {values!r}")
    for v in values:
        if isinstance(v, bool) or not (isinstance(v, int) and v >= 1 if integers
                                       else isinstance(v, (int, float)) and v >= 0):
            raise ConfigError(f"{key} must hold {what}; {v!r} is not")
    if len(set(values)) != len(values):
        raise ConfigError(f"{key} lists a value twice: {list(values)}")


@dataclass
class OptimConfig:
    name: Optimizer = Optimizer.adam.value
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    weight_decay: float = 0.0
    label_smoothing: float = 0.1
    smooth_real_tokens_only: bool = False

    def check(self, prefix: str) -> None:
        _positive(f"{prefix}.lr", self.lr)
        if len(self.betas) != 2:
            raise ConfigError(f"config key '{prefix}.betas' must hold two numbers")
        _fraction(f"{prefix}.label_smoothing", self.label_smoothing)


@dataclass
class SchedulerConfig:
    name: Schedule = Schedule.warmup_decay.value
    warmup_steps: int = 500
    decay: Decay = Decay.inverse_sqrt.value
    total_steps: int = 0
    min_lr: float = 0.0
    plateau_factor: float = 0.5
    plateau_patience: int = 2

    def check(self, prefix: str) -> None:
        for key in ("warmup_steps", "total_steps", "min_lr", "plateau_patience"):
            _positive(f"{prefix}.{key}", getattr(self, key), allow_zero=True)
        if not 0.0 < self.plateau_factor <= 1.0:
            raise ConfigError(f"config key '{prefix}.plateau_factor' must be in (0, 1], got {self.plateau_factor}")


@dataclass
class ValidationConfig:
    metric: Metric = Metric.bleu.value
    max_sentences: int = 0


@dataclass
class TrainConfig:
    """conf/train.yaml as a whole: the top-level keys and the sections above. `data` and `model` are
    typed by the schema of the chosen option (GROUP_SCHEMAS). The Lightning groups
    (trainer, callbacks, logger) and paths are `_target_` specs and Lightning's own arguments, which
    Lightning checks when it is built, so their type here is Any."""

    task_name: str
    seed: int
    deterministic: bool
    ckpt_path: Optional[str]
    init_from: Optional[str]
    test_after_training: bool
    test_moses_bleu: bool
    test_tune_search: bool
    plot_curves: bool
    average_last: int
    max_bad_steps: int
    max_oom_steps: int
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    # A translation or a language model, with its data: typed by the schema its group file names
    # (GROUP_SCHEMAS: conf/model/rnn.yaml starts with `defaults: [rnn_schema, _self_]`).
    data: Any = None
    model: Any = None
    optim: OptimConfig = field(default_factory=OptimConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    trainer: Any = None
    callbacks: Any = None
    logger: Any = None
    paths: Any = None


# (group, name, dataclass) registered with Hydra's ConfigStore: the primary config's schema, and the
# schema of each data and model option, named first in that option's defaults list.
GROUP_SCHEMAS = (
    (None, "train_schema", TrainConfig),
    ("data", "parallel_schema", DataConfig),
    ("data", "monolingual_schema", MonolingualDataConfig),
    ("model", "rnn_schema", ModelConfig),
    ("model", "rnn_lm_schema", LanguageModelConfig),
)


def metric_key(metric: str) -> str:
    return f"val/{metric}"


# ------------------------------------------------------------------------------------ building sections
def _field_type(cls: type, name: str) -> Any:
    """The annotation of field `name` of dataclass `cls`, with Optional[...] unwrapped."""
    kind = typing.get_type_hints(cls)[name]
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    return args[0] if type(None) in typing.get_args(kind) and len(args) == 1 else kind


def _build(cls: type, values: Any, prefix: str) -> Any:
    if not isinstance(values, Mapping):
        raise ConfigError(f"config key '{prefix}' must be a mapping, got {values!r}")
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(f"unknown config key '{prefix}.{unknown[0]}'; valid keys under '{prefix}': "
                          + ", ".join(sorted(names)))
    kwargs = {}
    for name, value in values.items():
        kind, key = _field_type(cls, name), f"{prefix}.{name}"
        item = (typing.get_args(kind) or [None])[0] if typing.get_origin(kind) is list else None
        if dataclasses.is_dataclass(kind):
            kwargs[name] = _build(kind, value or {}, key)
        elif dataclasses.is_dataclass(item):  # a list of sections (data.train_corpora)
            if not isinstance(value, (list, tuple)):
                raise ConfigError(f"config key '{key}' must be a list, got {value!r}")
            kwargs[name] = [_build(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
        else:
            kwargs[name] = value
    return cls(**kwargs)  # keys the mapping lacks take the defaults (checkpoints older than the key)


def check_section(obj: Any, prefix: str) -> None:
    """Check a section dataclass (and the sections inside it): choices, then its own `check`."""
    for f in dataclasses.fields(obj):
        value, kind, key = getattr(obj, f.name), _field_type(type(obj), f.name), f"{prefix}.{f.name}"
        if dataclasses.is_dataclass(value):
            check_section(value, key)
        elif isinstance(kind, type) and issubclass(kind, Choice) and value not in {m.value for m in kind}:
            raise ConfigError(f"config key '{key}' is {value!r}; valid options: {kind.options()}")
    check = getattr(obj, "check", None)
    if check is not None:
        check(prefix)


def section(cls: type, values: Any, prefix: str) -> Any:
    """Dataclass `cls` from a config section named `prefix`, checked (`check_section`).

    `values` is a composed omegaconf node (its types already checked by Hydra; interpolations are
    resolved here) or a plain mapping (a checkpoint's stored config, a test). A key the dataclass lacks
    is an error (also one added with `+` on the command line); errors name `prefix.key`.
    """
    omegaconf = sys.modules.get("omegaconf")  # never imported here: translation runs without it
    if omegaconf is not None and isinstance(values, omegaconf.DictConfig):
        with hydra_errors():
            values = omegaconf.OmegaConf.to_container(values, resolve=True, throw_on_missing=True,
                                                      enum_to_str=True)
    obj = _build(cls, {} if values is None else values, prefix)
    check_section(obj, prefix)
    return obj


# ------------------------------------------------------------------------------- Hydra's side of it
# Hydra and omegaconf are imported inside these functions: translation imports this module without them.
def register_configs() -> None:
    """Register `train_schema` (every value `???`: the YAML files must set them) and the resolvers."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import DictConfig, OmegaConf

    def require_every_value(node: DictConfig, cls: type) -> None:
        for f in dataclasses.fields(cls):
            kind = _field_type(cls, f.name)
            if dataclasses.is_dataclass(kind):
                require_every_value(node[f.name], kind)
            elif kind is not Any:  # the Lightning groups stay open (null until their files fill them)
                node[f.name] = "???"

    store = ConfigStore.instance()
    for group, name, cls in GROUP_SCHEMAS:
        schema = OmegaConf.structured(cls)
        require_every_value(schema, cls)
        store.store(group=group, name=name, node=schema)

    def metric_mode(metric: str) -> str:
        """`${metric_mode:bleu}` -> 'max': checkpoint and early-stopping direction follow validation.metric."""
        if metric not in METRIC_MODES:
            raise ConfigError(f"config key 'validation.metric' is {metric!r}; valid options: {Metric.options()}")
        return METRIC_MODES[metric]

    OmegaConf.register_new_resolver("metric_mode", metric_mode, replace=True)


_TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
# Configs that a Hydra plugin from an optional extra registers: missing, they mean a missing extra, not a typo.
PLUGIN_EXTRAS = {"hydra/sweeper/optuna": ("hparams_search=optuna needs Hydra's Optuna sweeper", "optuna")}


def describe(error: BaseException) -> str:
    """The message of a Hydra or omegaconf config error, in this project's words where it has them:
    the full key, and the valid keys or options."""
    from hydra.errors import MissingConfigException
    from omegaconf.errors import (ConfigAttributeError, ConfigKeyError, MissingMandatoryValue,
                                  OmegaConfBaseException, ValidationError)

    missing = error.missing_cfg_file if isinstance(error, MissingConfigException) else None
    if missing in PLUGIN_EXTRAS:
        what, extra = PLUGIN_EXTRAS[missing]
        return f"{what}, which is not installed: pip install 'seq2seq[{extra}]'"
    cause: BaseException | None = error
    while cause is not None and not isinstance(cause, OmegaConfBaseException):
        cause = cause.__cause__ or cause.__context__
    key = getattr(cause, "full_key", None)
    owner, name = getattr(cause, "object_type", None), getattr(cause, "key", None)
    known = dataclasses.is_dataclass(owner) and isinstance(name, str)
    if key and known and isinstance(cause, (ConfigKeyError, ConfigAttributeError)):
        names = sorted(f.name for f in dataclasses.fields(owner))
        if name not in names:
            parent = key.rpartition(".")[0]
            where = f"under '{parent}'" if parent else "at the top level"
            return f"unknown config key '{key}'; valid keys {where}: " + ", ".join(names)
    if key and isinstance(cause, MissingMandatoryValue):
        return f"config key '{key}' has no value; set it in its YAML file or on the command line"
    if key and known and isinstance(cause, ValidationError) and name in {f.name for f in dataclasses.fields(owner)}:
        kind, value = _field_type(owner, name), cause.value
        if isinstance(kind, type) and issubclass(kind, Choice):
            return f"config key '{key}' is {value!r}; valid options: {kind.options()}"
        if value is None:
            return f"config key '{key}' cannot be null"
        expected = _TYPE_NAMES.get(kind) or ("a list" if typing.get_origin(kind) is list else str(kind))
        return f"config key '{key}' must be {expected}, got {value!r}"
    text = str(error)
    return text if cause is None or cause is error or str(cause) in text else f"{text}\n{cause}"


@contextmanager
def hydra_errors() -> Iterator[None]:
    """Re-raise Hydra's and omegaconf's config errors as ConfigError, with `describe`'s message."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        yield
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(describe(e)) from e


def run_hydra_app(app: Callable[[], Any]) -> None:
    """Call a `@hydra.main` function; a config error Hydra finds while composing (unknown key, wrong
    type, invalid choice, missing group option) is printed as one `error: ...` and exits with 2, like
    the errors the task itself reports. HYDRA_FULL_ERROR=1 keeps Hydra's full traceback."""
    saved = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra then re-raises instead of printing and exiting with 1
    try:
        with hydra_errors():
            app()
    except ConfigError as e:
        if saved == "1":
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    finally:
        if saved is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = saved
