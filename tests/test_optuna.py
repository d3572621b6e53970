"""Hyperparameter search (`seq2seq-train -m hparams_search=optuna`, conf/hparams_search/optuna.yaml): the
config composes with the SLURM launcher, a missing sweeper names its extra, a study on a toy task records
each run's best validation score as its trial's objective and continues when the command runs again, and
`seq2seq-runs` shows the study's best trial under the table. The optuna extra (hydra-optuna-sweeper) is
installed by .ci/run: under CI=true these tests fail instead of skipping without it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from seq2seq.cli import runs as collect
from seq2seq.training.optuna_study import RESULTS_FILE, STUDY_FILE, record_study, register_resolvers

from .helpers import TINY, compose_train, learn, read_metrics, require, run_script, series

LEVERS = {"optim.lr", "model.dropout", "model.encoder_hidden_size", "model.decoder_hidden_size",
          "optim.label_smoothing", "batching.max_tokens"}


def _sweeper() -> None:
    require("hydra_plugins.hydra_optuna_sweeper")


def _optuna():
    _sweeper()
    return require("optuna")  # seconds to import: only the tests that open a study


@pytest.mark.parametrize("metric,direction", [("bleu", "maximize"), ("ter", "minimize")])
def test_the_search_composes_with_the_slurm_launcher(tmp_path, metric, direction):
    """hparams_search=optuna and hydra/launcher=slurm in one config: Optuna's TPE sweeper over the levers,
    its direction following validation.metric, its study in SQLite beside the sweep folder (the folder made
    for it), the trials submitted by submitit. Mutation: `direction: maximize` in optuna.yaml fails the ter case."""
    _sweeper()
    require("hydra_plugins.hydra_submitit_launcher")
    register_resolvers()
    cfg = compose_train(["hparams_search=optuna", "hydra/launcher=slurm", "hydra.launcher.partition=gpu",
                         f"validation.metric={metric}", f"hydra.sweep.dir={tmp_path / 'study' / 'sweep'}"], tmp_path)
    sweeper, launcher = cfg.hydra.sweeper, cfg.hydra.launcher
    assert sweeper._target_.endswith("OptunaSweeper") and launcher._target_.endswith("SlurmLauncher")
    assert sweeper.direction == direction
    assert set(sweeper.params) == LEVERS
    assert sweeper.study_name == f"train_{metric}"
    assert sweeper.storage == f"sqlite:///{(tmp_path / 'study' / 'optuna.db').resolve()}"
    assert (tmp_path / "study").is_dir()  # SQLite makes the file, not its folder
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler" and sweeper.sampler.seed == cfg.seed  # a new study
    OmegaConf.to_container(launcher, resolve=True)


def test_a_missing_sweeper_names_the_extra(capsys, tmp_path, monkeypatch):
    """Without hydra-optuna-sweeper (here: its config taken out of Hydra's store), `seq2seq-train -m
    hparams_search=optuna` says in one line which extra to install, with exit status 2. Mutation: dropping
    the PLUGIN_EXTRAS entry in seq2seq/config.py prints Hydra's many-line "Could not find" instead."""
    from hydra.core.config_store import ConfigStore
    from hydra.core.plugins import Plugins

    from seq2seq.cli import train

    _sweeper()
    Plugins.instance()  # the plugins are scanned (and register their configs) once, before the entry goes
    sweepers = ConfigStore.instance().repo["hydra"]["sweeper"]
    monkeypatch.delitem(sweepers, "optuna.yaml")
    monkeypatch.setattr(sys, "argv", ["seq2seq-train", "-m", "hparams_search=optuna",
                                      f"hydra.sweep.dir={tmp_path}"])
    with pytest.raises(SystemExit) as exit_info:
        train.main()
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == ("error: hparams_search=optuna needs Hydra's Optuna sweeper, which is "
                                               "not installed: pip install 'seq2seq[optuna]'")


# --------------------------------------------------------------------- seq2seq-runs on a study's folders
def _fake_trial(run: Path, params: dict, best: float, db: Path) -> None:
    """A trial's run folder: its overrides (as the sweeper passes them), a log, its study record."""
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"{k}={v}" for k, v in params.items()]
                                                                  + ["hparams_search=optuna"]))
    (run / ".hydra" / "config.yaml").write_text("validation:\n  metric: chrf\n")
    (run / "logs").mkdir()
    (run / "logs" / "metrics.csv").write_text(f"step,val/chrf\n9,{best - 1}\n19,{best}\n")
    record_study(run, "toy_chrf", f"sqlite:///{db}", "maximize", "best val/chrf")


TRIALS = [({"optim.lr": 0.0012345678901234, "model.dropout": 0.1}, 30.5),
          ({"optim.lr": 0.003, "model.dropout": 0.25}, 41.25),
          ({"optim.lr": 0.0005, "model.dropout": 0.3}, 35.0)]


def _fake_study_folders(root: Path, db: Path) -> None:
    """TRIALS run in two sweep folders (the study resumed once): first/0, first/1, second/0; the second
    folder holds the sweeper's summary, naming trial 1 (in first/) the best."""
    for i, (params, value) in enumerate(TRIALS):
        _fake_trial(root / ("first" if i < 2 else "second") / str(i if i < 2 else i - 2), params, value, db)
    (root / "second" / RESULTS_FILE).write_text(yaml.safe_dump(
        {"name": "optuna", "best_params": TRIALS[1][0], "best_value": TRIALS[1][1]}))


@pytest.mark.slow  # importing optuna 2.10 takes seconds (pandas, scipy, matplotlib): no rule of conftest sees it
@pytest.mark.filterwarnings("ignore:.*is experimental")  # optuna's add_trial and create_trial
def test_runs_table_shows_the_best_trial_of_the_study(tmp_path):
    """A study of three trials, the second the best: the table of the second sweep folder ends with the
    study's best trial, its number, value, parameters and that it is not among these runs; the table of
    both folders names its run folder; --json holds the same. Mutation: `read_studies` taking
    `study.trials[-1]` instead of `study.best_trial` fails it."""
    optuna = _optuna()
    db = tmp_path / "optuna.db"
    study = optuna.create_study(study_name="toy_chrf", storage=f"sqlite:///{db}", direction="maximize")
    dists = {"optim.lr": optuna.distributions.LogUniformDistribution(1e-4, 1e-2),
             "model.dropout": optuna.distributions.UniformDistribution(0.0, 0.4)}
    for params, value in TRIALS:
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=value))
    _fake_study_folders(tmp_path, db)

    out = tmp_path / "runs.md"
    assert collect.main([str(tmp_path / "second"), "--markdown", str(out)]) == 0
    text = out.read_text()
    assert text.splitlines()[0].startswith("| run |")
    assert (f"Optuna study `toy_chrf` (sqlite:///{db}), maximize best val/chrf: 3 trials (3 complete).\n\n"
            "Best trial 1 (not among these runs): 41.25; model.dropout=0.25, optim.lr=0.003.\n") in text

    assert collect.main([str(tmp_path), "--markdown", str(out), "--json", str(tmp_path / "runs.json")]) == 0
    assert "Best trial 1 (run first/1): 41.25;" in out.read_text()
    (summary,) = json.loads((tmp_path / "runs.json").read_text())["optuna"]
    assert summary["best_trial"] == {"number": 1, "value": 41.25, "params": TRIALS[1][0]}
    assert summary["run"] == "first/1" and summary["trials"] == {"complete": 3}


def test_runs_table_without_the_study_database_shows_the_sweepers_summary(tmp_path):
    """The study's database gone (or optuna not installed): optimization_results.yaml of the sweep folder
    still gives the best parameters and value, matched to the run that drew them, without the trial's
    number; drawn values are short in the table. Needs no optuna. Mutation: `_matches` comparing the
    values as numbers with the settings' strings (never equal) fails it."""
    db = tmp_path / "optuna.db"
    _fake_study_folders(tmp_path, db)
    out = tmp_path / "runs.md"
    assert collect.main([str(tmp_path), "--markdown", str(out), "--json", str(tmp_path / "runs.json")]) == 0
    text = out.read_text()
    assert "| first/0 | 0.001235 | 0.1 |" in text  # a drawn learning rate, with 4 significant digits
    assert (f"Best trial ? (run first/1): 41.25; model.dropout=0.25, optim.lr=0.003.\n\n"
            f"(sqlite:///{db} does not exist)\n") in text
    assert not db.exists()  # reading the table created no empty study
    (summary,) = json.loads((tmp_path / "runs.json").read_text())["optuna"]
    assert summary["best_trial"] == {"number": None, "value": 41.25, "params": TRIALS[1][0]}
    assert summary["run"] == "first/1" and summary["study_name"] == "toy_chrf"


# ---------------------------------------------------------------------------- a real study on a toy task
def _trial_runs(sweep: Path) -> list[Path]:
    return sorted((p for p in sweep.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))


TRIALS_PER_RUN = 2  # each trial trains for seconds


@pytest.fixture(scope="module")
def study(tmp_path_factory, learnable_corpus):
    """`seq2seq-train -m hparams_search=optuna ... hydra.sweeper.n_trials=2` run twice, the same command
    from the same folder: two dated sweep folders under multirun/train/, one study in optuna.db beside them."""
    tmp = tmp_path_factory.mktemp("optuna")
    overrides = [o for o in learn(learnable_corpus, steps=30, val_every=10) if not o.startswith("optim.lr=")]
    command = ["-m", "hparams_search=optuna", *TINY, *overrides, "validation.metric=chrf",
               "model.encoder_hidden_size=choice(16, 32)", "model.decoder_hidden_size=32",  # small for seconds
               "batching.max_tokens=1024", "test_after_training=false", "plot_curves=false",
               f"paths.data_dir={tmp / 'data'}", f"hydra.sweeper.n_trials={TRIALS_PER_RUN}"]
    procs = [run_script("train", *command, cwd=tmp) for _ in range(2)]
    sweeps = sorted(p for p in (tmp / "multirun" / "train").iterdir() if p.is_dir())
    return sweeps, procs, f"sqlite:///{tmp / 'multirun' / 'train' / 'optuna.db'}"


def test_each_trial_objective_is_its_runs_best_validation(study):
    """Every trial of the study (read back with Optuna from the SQLite file) has as its value the best
    val/chrf its run logged, and its parameters are the run's command-line settings. Mutation: hydra_main
    returning the last validation's score (`metrics.get(metric)`) fails it (in a trial whose best chrF is
    not its last)."""
    optuna = _optuna()
    sweeps, _, storage = study
    assert len(sweeps) == 2
    trials = optuna.load_study(study_name="train_chrf", storage=storage).trials
    assert [t.number for t in trials] == list(range(2 * TRIALS_PER_RUN))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    runs = [run for sweep in sweeps for run in _trial_runs(sweep)]
    assert len(runs) == 2 * TRIALS_PER_RUN
    best_is_not_last = 0
    for trial, run in zip(trials, runs):
        overrides = yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text())
        assert {f"{k}={v}" for k, v in trial.params.items()} <= set(overrides)
        assert set(trial.params) == {"optim.lr", "model.dropout", "model.encoder_hidden_size", "optim.label_smoothing"}
        logged = series(read_metrics(run), "val/chrf")
        assert len(logged) == 3 and trial.value == pytest.approx(max(logged), rel=1e-6)
        best_is_not_last += max(logged) != logged[-1]
        assert yaml.safe_load((run / STUDY_FILE).read_text())["study_name"] == "train_chrf"
    assert best_is_not_last, "every trial's best chrF is its last: the test cannot tell best from last"


def test_running_the_command_again_continues_the_study(study):
    """The second invocation adds its trials to the same study (numbers 2-3) with new parameters (the
    sampler's seed moves on with the study's size), in a new sweep folder. Mutation: `seed: ${seed}` in
    optuna.yaml (the sampler's random start replayed) fails it."""
    optuna = _optuna()
    sweeps, procs, storage = study
    assert "A new study created" in procs[0].stdout + procs[0].stderr
    assert "A new study created" not in procs[1].stdout + procs[1].stderr
    summaries = optuna.get_all_study_summaries(storage)
    assert [(s.study_name, s.n_trials) for s in summaries] == [("train_chrf", 2 * TRIALS_PER_RUN)]
    trials = optuna.load_study(study_name="train_chrf", storage=storage).trials
    first, again = [t.params for t in trials[:TRIALS_PER_RUN]], [t.params for t in trials[TRIALS_PER_RUN:]]
    assert not any(p in first for p in again)
    for sweep in sweeps:
        assert [p.name for p in _trial_runs(sweep)] == [str(i) for i in range(TRIALS_PER_RUN)]
        assert (sweep / RESULTS_FILE).is_file()


def test_runs_table_of_the_real_study(study, tmp_path, capsys):
    """`seq2seq-runs` on the second sweep folder: its trials, and the study's best trial overall."""
    optuna = _optuna()
    sweeps, _, storage = study
    best = optuna.load_study(study_name="train_chrf", storage=storage).best_trial
    out = tmp_path / "runs.json"
    assert collect.main([str(sweeps[1]), "--json", str(out)]) == 0
    (summary,) = json.loads(out.read_text())["optuna"]
    assert summary["best_trial"] == {"number": best.number, "value": best.value, "params": best.params}
    second = best.number - TRIALS_PER_RUN  # its number in the second sweep folder
    assert summary["run"] == (str(second) if second >= 0 else None)
    assert f"Best trial {best.number} (" in capsys.readouterr().out
    assert len(json.loads(out.read_text())["runs"]) == TRIALS_PER_RUN


def test_a_trial_whose_training_stops_fails_and_the_search_goes_on(learnable_corpus, tmp_path):
    """A learning rate of 1e30 stops training (max_bad_steps): in a search that trial is recorded as failed
    and the next one runs, where a single run would end `seq2seq-train` with status 3. With seed 6 the
    sampler draws 1e30, 1e30, 0.01. Mutation: hydra_main exiting with 3 in a trial too fails it."""
    optuna = _optuna()
    overrides = [o for o in learn(learnable_corpus, steps=10, val_every=5) if not o.startswith("optim.lr=")]
    run_script("train", "-m", "hparams_search=optuna", *TINY, *overrides, "seed=6", "optim.lr=choice(1e30, 0.01)",
               "max_bad_steps=2", "scheduler.warmup_steps=0", "model.dropout=0.1", "optim.label_smoothing=0.1",
               "model.encoder_hidden_size=16", "model.decoder_hidden_size=16", "batching.max_tokens=1024",
               "test_after_training=false", "plot_curves=false", f"paths.data_dir={tmp_path / 'data'}",
               f"hydra.sweep.dir={tmp_path / 'sweep'}", "hydra.sweeper.n_trials=3")
    trials = optuna.load_study(study_name="train_bleu", storage=f"sqlite:///{tmp_path / 'optuna.db'}").trials
    assert [(t.params["optim.lr"], t.state.name) for t in trials] == [(1e30, "FAIL"), (1e30, "FAIL"),
                                                                       (0.01, "COMPLETE")]
    assert (tmp_path / "sweep" / "2" / "checkpoints" / "best.ckpt").is_file()
