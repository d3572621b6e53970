"""`seq2seq-train`: train a translator, keep best/last checkpoints, then test the best one.

`train(cfg)` is a plain function over a composed config (tests call it directly); `main()` is the
thin Hydra entry point. Resume a run with `hydra.run.dir=<its folder> ckpt_path=last`.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from omegaconf import DictConfig, OmegaConf

from seq2seq.cli.hydra_help import app_help, wants_quick_help
from seq2seq.config import (CONF_DIR, LM_TYPE, BatchingConfig, ConfigError, DataConfig, ModelConfig, OptimConfig,
                            SchedulerConfig, SearchConfig, ValidationConfig, metric_key, run_hydra_app, section)

# torch, Lightning and the model code are imported inside the functions that use them: Hydra answers
# `--help` (and rejects a bad override) before calling the task function, without paying for them.
if TYPE_CHECKING:
    import lightning.pytorch as pl
    import torch

log = logging.getLogger(__name__)


def user_errors() -> tuple[type[Exception], ...]:
    """The exceptions reported as `error: ...` with exit status 2 (user mistakes, not bugs); a function,
    so that importing this module does not import the checkpoint code, and with it torch."""
    from seq2seq.checkpoint.format import CheckpointError
    from seq2seq.data.corpus import CorpusError
    from seq2seq.data.tokenizer import TokenizerError

    return (ConfigError, CorpusError, TokenizerError, CheckpointError)


def run_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain containers (without Hydra's own node), for checkpoints: choices
    are stored as strings, so `torch.load(weights_only=True)` reads them."""
    # Hydra's node is left out before resolving: under compose() (tests) it holds unresolvable keys.
    keys = [k for k in cfg.keys() if k != "hydra"]
    return OmegaConf.to_container(OmegaConf.masked_copy(cfg, keys), resolve=True, enum_to_str=True)


def check_hardware(cfg: DictConfig) -> None:
    import torch

    from seq2seq.model.precision import bf16_supported, precision_dtype

    accelerator = str(cfg.trainer.get("accelerator", "cpu"))
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(f"config key 'trainer.accelerator' is {accelerator!r} but no CUDA GPU is visible "
                          "on this machine; use trainer=cpu (or trainer=ddp_cpu for several processes)")
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    if (on_cpu and precision_dtype(cfg.trainer.get("precision"), "cpu") is not None and cfg.model.cell == "lstm"
            and not bf16_supported("cpu")):
        raise ConfigError(f"config key 'trainer.precision' is {cfg.trainer.precision!r}, but this CPU cannot "
                          "run an LSTM in bfloat16 (oneDNN needs AVX512-BF16); on the CPU use "
                          "trainer.precision=32-true (or model.cell=gru)")


def step_limit(cfg: DictConfig, key: str) -> int:
    """`max_bad_steps` or `max_oom_steps`: consecutive skipped steps that stop the run (0 = never)."""
    value = cfg.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"config key '{key}' must be an integer >= 0 (0 = never stop), got {value!r}")
    return value


def resolve_ckpt_path(cfg: DictConfig, run_dir: Path) -> str | None:
    path = cfg.get("ckpt_path")
    if path in (None, ""):
        return None
    if path == "last":
        last = run_dir / "checkpoints" / "last.ckpt"
        if not last.is_file():
            raise ConfigError(f"config key 'ckpt_path' is 'last' but {last} does not exist; resume a run by "
                              "naming its folder: hydra.run.dir=<run folder> ckpt_path=last")
        return str(last)
    if not Path(path).is_file():
        raise ConfigError(f"config key 'ckpt_path': checkpoint {path} does not exist")
    return str(path)


def continue_csv_logs(loggers: list[Any], ckpt_path: str) -> None:
    """A resumed run continues its logs/metrics.csv: the rows logged after the checkpoint's step (the
    resumed run logs them again) are dropped, the rest kept (seq2seq.training.csv_logger)."""
    import torch

    from seq2seq.training.csv_logger import CSVLogger

    csv_loggers = [lg for lg in loggers if isinstance(lg, CSVLogger)]
    if not csv_loggers:
        return
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False, mmap=True)
    # The step Lightning logs rows with (optimiser steps, skipped ones included).
    step = ckpt.get("loops", {}).get("fit_loop", {}).get("epoch_loop.state_dict", {}).get(
        "_batches_that_stepped", ckpt["global_step"])
    for lg in csv_loggers:
        lg.experiment.keep_until(int(step))  # a no-op on ranks other than 0


def instantiate_all(group: DictConfig | None) -> list[Any]:
    """Instantiate every `_target_` entry of a callbacks/logger group."""
    if not group:
        return []
    return [hydra.utils.instantiate(node) for node in group.values() if node and "_target_" in node]


def hydra_logging_config() -> dict[str, Any] | None:
    """Hydra's job logging config, resolved, or None outside a Hydra run."""
    from hydra.core.hydra_config import HydraConfig

    try:
        return OmegaConf.to_container(HydraConfig.get().job_logging, resolve=True) or None
    except Exception:  # no Hydra run (tests compose configs), or an unresolvable output folder
        return None


def check_launch(trainer: pl.Trainer) -> None:
    """Refuse launches that cannot work: a DDP launch that re-runs the script (strategy=ddp) inside a
    Hydra multirun (every child would start the whole sweep again), and several nodes without anything
    that tells this process where the other nodes are (it would wait for them forever)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    environment = getattr(trainer.strategy, "cluster_environment", None)
    if (trainer.num_nodes > 1 and type(environment).__name__ == "LightningEnvironment"
            and not {"MASTER_ADDR", "NODE_RANK"} <= set(os.environ)):
        raise ConfigError(f"config key 'trainer.num_nodes' is {trainer.num_nodes}, but no cluster launcher started "
                          "this process: submit through SLURM (hydra/launcher=slurm, or srun), or set MASTER_ADDR, "
                          "MASTER_PORT and NODE_RANK on every node (see docs/cluster.md)")

    launcher = getattr(trainer.strategy, "launcher", None)
    relaunches = (type(launcher).__name__ == "_SubprocessScriptLauncher"
                  and getattr(launcher, "num_processes", 1) > 1
                  and not launcher.cluster_environment.creates_processes_externally)
    if relaunches and HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        raise ConfigError("config key 'trainer.strategy': ddp starts each device's process by re-running the "
                          "command, which under -m (multirun) would run the sweep again in every process; in a "
                          "sweep use trainer=ddp_cpu (ddp_spawn), trainer.strategy=ddp_spawn, one device per "
                          "job, or the SLURM launcher (hydra/launcher=slurm)")


def moses_language(cfg: DictConfig, tgt_lang: str) -> str | None:
    """The language of the end-of-run Moses-tokenized BLEU: `data.tgt_lang` when `test_moses_bleu` is on and
    sacremoses is installed, else None (a missing sacremoses is said in one log line). Checked before
    training, so that a target language without Moses rules is an error then, not after the run."""
    if not (cfg.test_moses_bleu and cfg.test_after_training):
        return None
    from seq2seq.evaluation.metrics import MOSES_EXTRA, moses_languages

    try:
        languages = moses_languages()
    except RuntimeError:
        log.info("test_moses_bleu: sacremoses is not installed, so the test scores leave out the lowercased "
                 "Moses-tokenized BLEU the Multi30k papers report (%s; test_moses_bleu=false silences this)",
                 MOSES_EXTRA)
        return None
    if tgt_lang not in languages:
        raise ConfigError(f"config key 'test_moses_bleu' is true, but 'data.tgt_lang' {tgt_lang!r} has no Moses "
                          f"tokenization rules (valid: {', '.join(languages)}); set test_moses_bleu=false")
    return tgt_lang


def evaluate(ckpt: str | Path, sets: dict[str, tuple[list[str], list[str]]], out_dir: Path, pair: str,
             device: torch.device | str, dtype: torch.dtype | None = None,
             moses_lang: str | None = None) -> list[dict[str, Any]]:
    """Translate each set's sources with checkpoint `ckpt` and score them against its references.

    `sets`: split name -> (sources, references). Writes, per split, `{split}.{pair}.hyp` and
    `{split}.{pair}.scores.json` into `out_dir`, and all rows in `test_scores.json`; returns the rows
    (see `evaluation.make_row`). With `moses_lang`, the scores also hold "moses": lowercased BLEU on
    text Moses-tokenized for that language.
    """
    from seq2seq.checkpoint.format import load_for_translation
    from seq2seq.evaluation.tables import translate_and_score, write_json
    from seq2seq.decoding.translator import Translator

    model, tokenizer, search_cfg, _ = load_for_translation(ckpt, device)
    translator = Translator(model, tokenizer, search_cfg, device=device, dtype=dtype)
    rows = translate_and_score(translator, sets, out_dir, pair, moses_lang)
    write_json(out_dir / "test_scores.json", rows, checkpoint=str(ckpt), pair=pair)
    return rows


def read_test_sets(data: DataConfig) -> dict[str, tuple[list[str], list[str]]]:
    """The raw text of every split named in `data.test_splits` (not `data.test_split`, which the
    prepared corpus holds), read before training so that a missing or broken file stops the run at
    once. Raises CorpusError naming the split and the folders searched."""
    from seq2seq.data.corpus import find_corpus_files, read_parallel

    names = [n for n in dict.fromkeys(data.test_splits) if n != data.test_split]
    return {name: read_parallel(*find_corpus_files(data, name)) for name in names}


def train_batches_per_epoch(datamodule: Any, world_size: int) -> int:
    """Training batches one process runs per epoch (what Lightning compares val_check_interval with)."""
    from seq2seq.data.batching import ParallelDataset, TokenBucketBatchSampler

    split = datamodule.corpus.splits["train"]
    dataset = ParallelDataset(split.src, split.tgt)
    b = datamodule.batching
    return len(TokenBucketBatchSampler(dataset.src_lengths, dataset.tgt_lengths, b.max_tokens, b.max_sentences,
                                       b.bucket_width, shuffle=True, seed=datamodule.seed,
                                       num_replicas=world_size, rank=0))


def check_schedule(trainer: pl.Trainer, batches: int) -> None:
    """Refuse, before training, the Trainer settings that Lightning would reject only once the data
    loaders are built (a traceback, and after DDP has started its processes)."""
    accumulate = trainer.accumulate_grad_batches
    if not isinstance(accumulate, int) or accumulate < 1:
        raise ConfigError(f"config key 'trainer.accumulate_grad_batches' must be an integer >= 1, got {accumulate!r}")
    limit = trainer.limit_train_batches
    per_epoch = min(batches, limit) if isinstance(limit, int) else int(batches * limit)
    if per_epoch < 1:
        raise ConfigError(f"config key 'trainer.limit_train_batches' is {limit!r}: that leaves no training batch of "
                          f"the {batches} per epoch (per process); use an integer >= 1 or a larger fraction")
    interval = trainer.val_check_interval
    if (isinstance(interval, int) and trainer.check_val_every_n_epoch is not None and interval > per_epoch
            and trainer.limit_val_batches != 0):
        raise ConfigError(f"config key 'trainer.val_check_interval' is {interval}, more than the {per_epoch} training "
                          "batches of an epoch (per process): validation would never run; set "
                          "trainer.check_val_every_n_epoch=null to count batches across epochs, or a smaller "
                          "interval (a float is a fraction of an epoch)")


def instantiate_trainer(cfg: DictConfig, **kwargs: Any) -> pl.Trainer:
    """The configured Trainer; a setting Lightning refuses becomes a ConfigError naming `trainer`."""
    from hydra.errors import InstantiationException
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        return hydra.utils.instantiate(cfg.trainer, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, (MisconfigurationException, ValueError, TypeError)):
            raise ConfigError(f"config key 'trainer': {cause}") from None
        raise


def quiet_third_party() -> None:
    """Silence, narrowly and by message, start-up noise the user cannot act on: torch's FutureWarning
    about Lightning's own use of `LeafSpec` (lightning/pytorch/utilities/_pytree.py) and Lightning's
    advert for its cloud logger, printed at every Trainer start; torch's advice against copying a tensor
    with `torch.tensor(t)`, which LearningRateMonitor does with our learning rate (a device tensor: see
    `schedule.py`)."""
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning)
    warnings.filterwarnings("ignore", message=r"To copy construct from a tensor", category=UserWarning,
                            module=r"lightning\.pytorch\.callbacks\.lr_monitor")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: "litlogger" not in record.getMessage())


def build_trainer(cfg: DictConfig, run_dir: Path) -> pl.Trainer:
    """The configured Trainer with its callbacks and loggers (translation and language models alike);
    temporaries left in its checkpoint folders by a killed run are removed first."""
    import lightning.pytorch as pl

    from seq2seq.training.averaging import ValidatedCheckpoints, best_checkpoint_callback
    from seq2seq.training.callbacks import WorkerLogging
    from seq2seq.training.checkpoint_io import AtomicCheckpointIO
    from seq2seq.temporaries import remove_stale

    if not isinstance(cfg.average_last, int) or cfg.average_last < 0:
        raise ConfigError(f"config key 'average_last' must be an integer >= 0 (0 or 1 = off), got {cfg.average_last!r}")
    callbacks = instantiate_all(cfg.get("callbacks"))
    loggers = instantiate_all(cfg.get("logger"))
    logging_config = hydra_logging_config()
    extra = [WorkerLogging(logging_config)] if logging_config else []
    # Checkpoints are what conf/callbacks/ configures: with none there (callbacks=none), Lightning must not
    # add its own (epoch=N-step=M.ckpt files in the logger's folder).
    checkpointing = any(isinstance(cb, pl.callbacks.ModelCheckpoint) for cb in callbacks)
    best = best_checkpoint_callback(callbacks)
    if cfg.average_last >= 2 and best is not None:
        extra.append(ValidatedCheckpoints(best.dirpath, keep=cfg.average_last))
    elif cfg.average_last >= 2:
        log.warning("average_last=%d: no best-checkpoint callback (callbacks=none?), so nothing is averaged",
                    cfg.average_last)
    trainer = instantiate_trainer(cfg, callbacks=callbacks + extra, logger=loggers or False,
                                  plugins=[AtomicCheckpointIO()], enable_checkpointing=checkpointing)
    check_launch(trainer)
    checkpoint_dirs = {run_dir / "checkpoints", *(Path(cb.dirpath) for cb in trainer.checkpoint_callbacks
                                                  if getattr(cb, "dirpath", None))}
    for folder in checkpoint_dirs:
        remove_stale(folder)  # saves cut short by a killed run (a save in progress elsewhere stays)
    return trainer


def resume_in_place(trainer: pl.Trainer, ckpt_path: str) -> None:
    """Before resuming in the run's own folder: its CSV log continues, and its checkpoints are meant to be there."""
    continue_csv_logs(trainer.loggers, ckpt_path)
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")


def train(cfg: DictConfig) -> dict[str, float]:
    """Train per `cfg`; returns the final callback metrics (plus test scores when tested)."""
    if cfg.model.get("type") == LM_TYPE:  # a language model: its own data, module and test (lm_train.py)
        from seq2seq.lm.training import train_language_model

        return train_language_model(cfg)
    if cfg.data.get("type") == "monolingual":
        raise ConfigError("data=monolingual is text for a language model, but the model group is a translation "
                          "model; use model=rnn_lm (experiment=lm_quickstart sets both)")
    quiet_third_party()
    import lightning.pytorch as pl

    from seq2seq.training.averaging import average_last_validated
    from seq2seq.data.datamodule import TranslationDataModule
    from seq2seq.training.module import TranslationModule

    data = section(DataConfig, cfg.data, "data")
    batching = section(BatchingConfig, cfg.batching, "batching")
    model_cfg = section(ModelConfig, cfg.model, "model")
    optim = section(OptimConfig, cfg.optim, "optim")
    scheduler = section(SchedulerConfig, cfg.scheduler, "scheduler")
    search_cfg = section(SearchConfig, cfg.search, "search")
    validation = section(ValidationConfig, cfg.validation, "validation")
    check_hardware(cfg)
    bad_steps, oom_steps = step_limit(cfg, "max_bad_steps"), step_limit(cfg, "max_oom_steps")
    moses_lang = moses_language(cfg, data.tgt_lang)
    run_dir = Path(cfg.paths.output_dir)
    plot_curves = cfg.plot_curves
    ckpt_path = resolve_ckpt_path(cfg, run_dir)
    init_from, tokenizer, weights = cfg.get("init_from"), None, None
    if init_from and data.tokenizer_from:
        raise ConfigError(f"config keys 'init_from' ({init_from}) and 'data.tokenizer_from' ({data.tokenizer_from}) "
                          "are both set: init_from already reuses its checkpoint's sentencepiece models; drop one")
    if init_from:
        from seq2seq.checkpoint.init_from import load_initial_weights

        tokenizer, weights = load_initial_weights(init_from, data, model_cfg)
    # Before the corpus is prepared: a missing test split stops the run now, not after training.
    test_sets = read_test_sets(data) if cfg.test_after_training else {}

    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS
    pl.seed_everything(cfg.seed, workers=True)

    datamodule = TranslationDataModule(data, batching, seed=cfg.seed, tokenizer=tokenizer)
    datamodule.setup("fit")  # builds the cache on a miss: the model needs the vocabulary sizes
    if tokenizer is not None:
        report = datamodule.corpus.report["train"]
        unk, pieces = report["src_unk"] + report["tgt_unk"], report["src_pieces"] + report["tgt_pieces"]
        if unk:
            log.warning("init_from: the checkpoint's sentencepiece models leave %d of the %d training pieces of this "
                        "corpus as <unk> (characters they never saw): those words cannot be learned", unk, pieces)
    module = TranslationModule(model_cfg, optim, scheduler, search_cfg, validation,
                               tokenizer=datamodule.tokenizer, run_config=run_config(cfg),
                               max_bad_steps=bad_steps, max_oom_steps=oom_steps)
    if weights is not None and ckpt_path is None:  # a resumed fine-tuning run restores its own weights
        from seq2seq.checkpoint.init_from import apply_weights

        apply_weights(module.model, weights, init_from)
        log.info("weights from %s (init_from): new optimiser, learning-rate schedule and step counters", init_from)
    n_params = sum(p.numel() for p in module.parameters())
    log.info("model: %s cell, %s attention, %.2fM parameters", model_cfg.cell, model_cfg.attention, n_params / 1e6)

    trainer = build_trainer(cfg, run_dir)
    check_schedule(trainer, train_batches_per_epoch(datamodule, trainer.world_size))
    if ckpt_path is not None:
        resume_in_place(trainer, ckpt_path)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    metrics.update(average_last_validated(trainer, module, datamodule))

    if cfg.test_tune_search and trainer.is_global_zero:  # before the test, which then uses the tuned search
        from seq2seq.evaluation.search_tuning import tune_after_training

        tune_after_training(trainer, datamodule, search_cfg)
    if cfg.test_after_training and trainer.is_global_zero:
        test = datamodule.corpus.splits["test"]
        test_sets = {data.test_split: (test.src_text, test.tgt_text), **test_sets}
        metrics.update(score_test_sets(trainer, test_sets, data, moses_lang))
    if plot_curves and trainer.is_global_zero:
        write_run_curves(trainer, run_dir)
    return metrics


def score_test_sets(trainer: pl.Trainer, sets: dict[str, tuple[list[str], list[str]]], data: DataConfig,
                    moses_lang: str | None = None) -> dict[str, float]:
    """Score the best checkpoint (by validation.metric) on every test set, print the table, write
    checkpoints/test_scores.json; -> the first set's cased scores as `test/*` metrics. Without a best
    checkpoint (no validation ran) the last one is scored, and without any checkpoint nothing is."""
    from seq2seq.training.averaging import best_checkpoint_path
    from seq2seq.training.callbacks import LastCheckpoint
    from seq2seq.evaluation.tables import table_lines
    from seq2seq.model.precision import precision_dtype

    best = best_checkpoint_path(trainer)
    ckpt = best if best and Path(best).is_file() else ""
    if not ckpt:
        lasts = [Path(cb.dirpath) / f"{cb.filename}{cb.FILE_EXTENSION}" for cb in trainer.checkpoint_callbacks
                 if isinstance(cb, LastCheckpoint)]
        ckpt = next((str(p) for p in lasts if p.is_file()), "")
        if not ckpt:
            log.warning("no checkpoint was written (no checkpoint callback: callbacks=none?): skipping the test")
            return {}
        log.warning("no best checkpoint (no validation ran): testing the last one, %s", ckpt)
    device = trainer.strategy.root_device
    pair, out_dir = f"{data.src_lang}-{data.tgt_lang}", Path(ckpt).parent
    # The trainer's precision, not the module's: after ddp_spawn the module in this process is detached.
    rows = evaluate(ckpt, sets, out_dir, pair, device, precision_dtype(trainer.precision, device.type), moses_lang)
    print(f"test ({', '.join(sets)}, {data.src_lang}->{data.tgt_lang}) with {ckpt}:")
    for line in table_lines(rows):
        print(line)
    print(f"scores: {out_dir / 'test_scores.json'}; hypotheses: {out_dir}/<split>.{pair}.hyp")
    metrics = {f"test/{k}": rows[0][k] for k in ("bleu", "chrf", "ter")}
    if "bleu_moses" in rows[0]:
        metrics["test/bleu_moses"] = rows[0]["bleu_moses"]
    return metrics


def write_run_curves(trainer: pl.Trainer, run_dir: Path) -> None:
    """plots/curves.png in the run folder, drawn from the run's CSV log (seq2seq.training.curves)."""
    from lightning.pytorch.loggers import CSVLogger
    from lightning.pytorch.loggers.csv_logs import ExperimentWriter

    from seq2seq.training.curves import write_curves

    out = run_dir / "plots" / "curves.png"
    csv_logger = next((lg for lg in trainer.loggers if isinstance(lg, CSVLogger)), None)
    if csv_logger is None:
        log.info("%s not written: it is drawn from the CSV log, and this run has no CSV logger (logger=csv)", out)
        return
    # Not `csv_logger.experiment`: in the launching process of a ddp_spawn run (whose rank 0 wrote the log),
    # creating the writer deletes the metrics file it finds.
    metrics_csv = Path(csv_logger.log_dir) / ExperimentWriter.NAME_METRICS_FILE
    try:
        written = write_curves(metrics_csv, out, title=run_dir.name)
    except Exception:  # noqa: BLE001 -- a figure must not turn a finished run into a failed one
        log.exception("%s not written: drawing it failed", out)
        return
    if written is not None:
        log.info("training curves: %s", written)


_task_started = False  # set once Hydra has composed the config and calls the task function


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def hydra_main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns the monitored validation metric (for sweepers)."""
    global _task_started
    _task_started = True
    from seq2seq.training.callbacks import TrainingStopped

    try:
        metrics = train(cfg)
    except user_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except TrainingStopped as e:  # diverged, or out of memory again and again: last.ckpt is written
        print(f"error: {e}", file=sys.stderr)
        sys.exit(3)
    return metrics.get(metric_key(cfg.validation.metric))


def main() -> None:
    """`seq2seq-train`. Config errors Hydra finds while composing (unknown key, wrong type, invalid
    choice, missing group option) are usage errors like ours: one `error:` line, exit status 2."""
    if wants_quick_help(sys.argv[1:]):
        print(app_help("seq2seq-train", "train a translator, keep best/last checkpoints, then test the best one.",
                       "experiment=quickstart trainer.max_epochs=3", CONF_DIR))
        return
    try:
        run_hydra_app(hydra_main)
    except SystemExit as e:
        if e.code == 1 and not _task_started:
            sys.exit(2)
        raise


if __name__ == "__main__":
    main()
