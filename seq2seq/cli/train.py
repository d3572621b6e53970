"""`seq2seq-train`: train a translator (or a language model, `model=rnn_lm`), keep best/last checkpoints,
then test the best one. Also `python -m seq2seq.cli.train [overrides]`.

`train(cfg)` dispatches a composed config on `model.type` (tests call it directly); `hydra_main` is the
Hydra task, `main()` the console entry. Resume a run with `hydra.run.dir=<its folder> ckpt_path=last`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from seq2seq.cli.hydra_help import app_help, wants_quick_help
from seq2seq.config import CONF_DIR, LM_TYPE, metric_key, run_hydra_app
from seq2seq.training.optuna_study import record_study, register_resolvers

register_resolvers()  # sqlite_url and optuna_seed, used by conf/hparams_search/optuna.yaml
# The training code (torch, Lightning, the model) is imported inside the functions that run it: Hydra
# answers `--help` (and rejects a bad override) before calling the task function, without paying for it.


def train(cfg: DictConfig) -> dict[str, float]:
    """Train per `cfg`: a language model when `model.type` is rnn_lm (`seq2seq.lm.training`), else a
    translation model (`seq2seq.training.run`); returns the final callback metrics (plus test scores)."""
    if cfg.model.get("type") == LM_TYPE:  # a language model: its own data, module and test
        from seq2seq.lm.training import train_language_model

        return train_language_model(cfg)
    from seq2seq.training.run import train as train_translation

    return train_translation(cfg)


_task_started = False  # set once Hydra has composed the config and calls the task function


def optuna_trial() -> bool:
    """Whether this run is a trial of Hydra's Optuna sweeper (-m hparams_search=optuna; without -m the
    sweeper is configured but idle)."""
    if not HydraConfig.initialized():
        return False
    hydra_cfg = HydraConfig.get()
    return hydra_cfg.mode == RunMode.MULTIRUN and "optuna" in str(hydra_cfg.sweeper.get("_target_", ""))


def record_trial(cfg: DictConfig) -> None:
    """A trial's run folder names its study (.hydra/optuna_study.yaml): `seq2seq-runs` finds it there."""
    sweeper = HydraConfig.get().sweeper
    record_study(Path(cfg.paths.output_dir), sweeper.study_name, sweeper.storage, str(sweeper.direction),
                 f"best {metric_key(cfg.validation.metric)}")


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def hydra_main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns the run's best validation score by validation.metric (best.ckpt's; the
    last validation's without a best-checkpoint callback): the objective of hparams_search=optuna."""
    global _task_started
    _task_started = True
    if optuna_trial():
        record_trial(cfg)
    from seq2seq.training.callbacks import TrainingStopped
    from seq2seq.training.run import user_errors

    try:
        metrics = train(cfg)
    except user_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except TrainingStopped as e:  # diverged, or out of memory again and again: last.ckpt is written
        print(f"error: {e}", file=sys.stderr)
        if optuna_trial():  # the sweeper records a failed trial and goes on (optuna.yaml: max_failure_rate)
            raise
        sys.exit(3)
    metric = metric_key(cfg.validation.metric)
    return metrics.get(f"best {metric}", metrics.get(metric))


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
