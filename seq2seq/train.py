"""`seq2seq-train`: train a translator, keep best/last checkpoints, then test the best one.

`train(cfg)` is a plain function over a composed config (tests call it directly); `main()` is the
thin Hydra entry point. Resume a run with `hydra.run.dir=<its folder> ckpt_path=last`.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from omegaconf import DictConfig, OmegaConf

from seq2seq.app_help import app_help, wants_quick_help
from seq2seq.config import (CONF_DIR, LM_TYPE, BatchingConfig, ConfigError, DataConfig, ModelConfig, OptimConfig,
                            SchedulerConfig, SearchConfig, ValidationConfig, metric_key, section)

# torch, Lightning and the model code are imported inside the functions that use them: Hydra answers
# `--help` (and rejects a bad override) before calling the task function, without paying for them.
if TYPE_CHECKING:
    import lightning.pytorch as pl
    import torch

log = logging.getLogger(__name__)


def user_errors() -> tuple[type[Exception], ...]:
    """The exceptions reported as `error: ...` with exit status 2 (user mistakes, not bugs); a function,
    so that importing this module does not import the checkpoint code, and with it torch."""
    from seq2seq.checkpoint import CheckpointError
    from seq2seq.corpus import CorpusError
    from seq2seq.tokenizer import TokenizerError

    return (ConfigError, CorpusError, TokenizerError, CheckpointError)


def run_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain containers (without Hydra's own node), for checkpoints."""
    # Hydra's node is left out before resolving: under compose() (tests) it holds unresolvable keys.
    keys = [k for k in cfg.keys() if k != "hydra"]
    return OmegaConf.to_container(OmegaConf.masked_copy(cfg, keys), resolve=True)


def check_hardware(cfg: DictConfig) -> None:
    import torch

    from seq2seq.lit_module import precision_dtype

    accelerator = str(cfg.trainer.get("accelerator", "cpu"))
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(f"config key 'trainer.accelerator' is {accelerator!r} but no CUDA GPU is visible "
                          "on this machine; use trainer=cpu (or trainer=ddp_cpu for several processes)")
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    if on_cpu and precision_dtype(cfg.trainer.get("precision"), "cpu") is not None and cfg.model.cell == "lstm":
        # Lightning runs 16-mixed as bf16 on the CPU; oneDNN's bf16 LSTM needs AVX512-BF16 hardware.
        try:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                torch.nn.LSTM(2, 2)(torch.zeros(1, 1, 2))
        except RuntimeError:
            raise ConfigError(f"config key 'trainer.precision' is {cfg.trainer.precision!r}, but this CPU cannot "
                              "run an LSTM in bfloat16 (oneDNN needs AVX512-BF16); on the CPU use "
                              "trainer.precision=32-true (or model.cell=gru)") from None


def max_bad_steps(cfg: DictConfig) -> int:
    value = cfg.get("max_bad_steps", 10)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"config key 'max_bad_steps' must be an integer >= 0 (0 = never stop), got {value!r}")
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


def evaluate(ckpt: str | Path, sources: list[str], references: list[str], out_prefix: Path,
             device: torch.device | str, dtype: torch.dtype | None = None) -> dict[str, Any]:
    """Translate `sources` with checkpoint `ckpt`, write hypotheses and scores beside `out_prefix`."""
    from seq2seq.checkpoint import load_for_translation
    from seq2seq.metrics import score_corpus
    from seq2seq.translator import Translator

    model, tokenizer, search_cfg, _ = load_for_translation(ckpt, device)
    translator = Translator(model, tokenizer, search_cfg, device=device, dtype=dtype)
    hyps = [t.text for t in translator.translate(sources)]
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out_prefix}.hyp").write_text("".join(h + "\n" for h in hyps), encoding="utf-8")
    scores = {"cased": score_corpus(hyps, [references]),
              "lowercase": score_corpus(hyps, [references], lowercase=True)}
    Path(f"{out_prefix}.scores.json").write_text(json.dumps(scores, indent=2), encoding="utf-8")
    return scores


def quiet_third_party() -> None:
    """Silence, narrowly and by message, start-up noise the user cannot act on: torch's FutureWarning
    about Lightning's own use of `LeafSpec` (lightning/pytorch/utilities/_pytree.py) and Lightning's
    advert for its cloud logger, printed at every Trainer start."""
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning)
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: "litlogger" not in record.getMessage())


def train(cfg: DictConfig) -> dict[str, float]:
    """Train per `cfg`; returns the final callback metrics (plus test scores when tested)."""
    if cfg.model.get("type") == LM_TYPE:  # a language model: its own data, module and test (lm_train.py)
        from seq2seq.lm_train import train_language_model

        return train_language_model(cfg)
    if cfg.data.get("type") == "monolingual":
        raise ConfigError("data=monolingual is text for a language model, but the model group is a translation "
                          "model; use model=rnn_lm (experiment=lm_quickstart sets both)")
    quiet_third_party()
    import lightning.pytorch as pl

    from seq2seq.callbacks import WorkerLogging
    from seq2seq.checkpoint_io import AtomicCheckpointIO
    from seq2seq.datamodule import TranslationDataModule
    from seq2seq.lit_module import TranslationModule, precision_dtype
    from seq2seq.metrics import report_lines

    data = section(DataConfig, cfg.data, "data")
    batching = section(BatchingConfig, cfg.batching, "batching")
    model_cfg = section(ModelConfig, cfg.model, "model")
    optim = section(OptimConfig, cfg.optim, "optim")
    scheduler = section(SchedulerConfig, cfg.scheduler, "scheduler")
    search_cfg = section(SearchConfig, cfg.search, "search")
    validation = section(ValidationConfig, cfg.validation, "validation")
    check_hardware(cfg)
    bad_steps = max_bad_steps(cfg)
    run_dir = Path(cfg.paths.output_dir)
    ckpt_path = resolve_ckpt_path(cfg, run_dir)

    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS
    pl.seed_everything(cfg.seed, workers=True)

    datamodule = TranslationDataModule(data, batching, seed=cfg.seed)
    datamodule.setup("fit")  # builds the cache on a miss: the model needs the vocabulary sizes
    module = TranslationModule(model_cfg, optim, scheduler, search_cfg, validation,
                               tokenizer=datamodule.tokenizer, run_config=run_config(cfg),
                               max_bad_steps=bad_steps)
    n_params = sum(p.numel() for p in module.parameters())
    log.info("model: %s cell, %s attention, %.2fM parameters", model_cfg.cell, model_cfg.attention, n_params / 1e6)

    callbacks = instantiate_all(cfg.get("callbacks"))
    loggers = instantiate_all(cfg.get("logger"))
    logging_config = hydra_logging_config()
    extra = [WorkerLogging(logging_config)] if logging_config else []
    trainer: pl.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks + extra,
                                                  logger=loggers or False, plugins=[AtomicCheckpointIO()])
    check_launch(trainer)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}

    # The checkpoint callback that monitors validation.metric (last/periodic ones monitor nothing).
    best = next((cb.best_model_path for cb in trainer.checkpoint_callbacks if cb.monitor), "")
    if cfg.test_after_training and trainer.is_global_zero:
        if not best:
            log.warning("no best checkpoint was written (no validation ran?): skipping the test")
        else:
            test = datamodule.corpus.splits["test"]
            device = trainer.strategy.root_device
            prefix = Path(best).parent / f"{data.test_split}.{data.src_lang}-{data.tgt_lang}"
            # The trainer's precision, not the module's: after ddp_spawn the module in this process is detached.
            scores = evaluate(best, test.src_text, test.tgt_text, prefix, device,
                              precision_dtype(trainer.precision, device.type))
            print(f"test ({data.test_split}, {data.src_lang}->{data.tgt_lang}) with {best}:")
            for line in report_lines(scores["cased"]) + report_lines(scores["lowercase"])[:1]:
                print(line)
            print(f"hypotheses: {prefix}.hyp")
            metrics.update({f"test/{k}": scores["cased"][k] for k in ("bleu", "chrf", "ter")})
    return metrics


_task_started = False  # set once Hydra has composed the config and calls the task function


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def hydra_main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns the monitored validation metric (for sweepers)."""
    global _task_started
    _task_started = True
    from seq2seq.lit_module import TrainingDivergedError

    try:
        metrics = train(cfg)
    except user_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except TrainingDivergedError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(3)
    return metrics.get(metric_key(cfg.validation.metric))


def main() -> None:
    """`seq2seq-train`. Hydra reports its own config errors (an unknown key on the command line, a
    missing group option) and exits with 1; those are usage errors like ours, so they exit with 2."""
    if wants_quick_help(sys.argv[1:]):
        print(app_help("seq2seq-train", "train a translator, keep best/last checkpoints, then test the best one.",
                       "experiment=quickstart trainer.max_epochs=3", CONF_DIR))
        return
    try:
        hydra_main()
    except SystemExit as e:
        if e.code == 1 and not _task_started:
            sys.exit(2)
        raise


if __name__ == "__main__":
    main()
