"""The Optuna study behind a hyperparameter search (`seq2seq-train -m hparams_search=optuna`): the two
resolvers of conf/hparams_search/optuna.yaml (`sqlite_url`: the study's SQLite file, its folder made;
`optuna_seed`: the sampler's seed, moved on by the trials the study holds), and, for `seq2seq-runs`, which
study the trials in a sweep folder belong to and its best trial.

Each trial run records its study in `.hydra/optuna_study.yaml` (`record_study`, called by `seq2seq-train`):
the study's name and storage (the SQLite URL of conf/hparams_search/optuna.yaml), the direction and the
objective. `read_studies` opens each study named there with Optuna's API and returns its best trial (number,
value, parameters) and the run folder that trained it when it is among the tabulated runs. Without Optuna
(or with the storage gone) it falls back to the `optimization_results.yaml` the sweeper writes into the
sweep folder at the end: the best parameters and value, without the trial's number.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import yaml  # PyYAML comes with hydra-core/omegaconf

STUDY_FILE = Path(".hydra") / "optuna_study.yaml"  # in each trial's run folder
RESULTS_FILE = "optimization_results.yaml"  # in the sweep folder, written by the sweeper at its end


# ------------------------------------------------------------------ the resolvers of hparams_search/optuna.yaml
def sqlite_url(path: str) -> str:
    """`${sqlite_url:multirun/x/optuna.db}` -> 'sqlite:////abs/multirun/x/optuna.db', its folder created:
    SQLite creates the file, not its folder, and the sweeper opens the study before Hydra makes the
    sweep folder."""
    file = Path(path).expanduser().resolve()
    file.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{file}"


def sampler_seed(seed: int, storage: str | None, study_name: str | None) -> int:
    """`${optuna_seed:${seed},<storage>,<study name>}`: `seed` plus the number of trials the study already
    holds. A resumed study then draws new trials: with the plain seed its sampler would start its random
    stream over and propose the first invocation's first trials again. Reproducible all the same."""
    if not storage or not study_name:
        return seed
    if storage.startswith("sqlite:///") and not Path(storage[len("sqlite:///"):]).is_file():
        return seed  # a new study
    import optuna  # only under hparams_search=optuna, where the sweeper has imported it already

    logging.getLogger("alembic").setLevel(logging.WARNING)  # schema checks are logged at INFO
    summaries = optuna.get_all_study_summaries(storage)
    return seed + next((s.n_trials for s in summaries if s.study_name == study_name), 0)


def register_resolvers() -> None:
    """Register `sqlite_url` and `optuna_seed` with omegaconf (seq2seq-train does, on import)."""
    from omegaconf import OmegaConf  # the runs table (seq2seq-runs) reads this module without it

    OmegaConf.register_new_resolver("sqlite_url", sqlite_url, replace=True)
    OmegaConf.register_new_resolver("optuna_seed", sampler_seed, replace=True)


# ------------------------------------------------------------------------------------------ the study's runs
def record_study(run: Path, study_name: str, storage: str | None, direction: str, objective: str) -> None:
    """Write `run/.hydra/optuna_study.yaml`: the study this trial run belongs to."""
    path = run / STUDY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump({"study_name": study_name, "storage": storage, "direction": direction,
                           "objective": objective}, sort_keys=False)
    path.write_text(text, encoding="utf-8")


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _matches(params: dict[str, Any], settings: dict[str, str]) -> bool:
    """Whether a run's command-line settings hold every parameter of a trial (the sweeper passes each
    as `name=value`, the value written as Python writes it)."""
    return bool(params) and all(settings.get(name) == str(value) for name, value in params.items())


def _load_study(ref: dict[str, Any]) -> tuple[Any, str]:
    """(the study, "") or (None, why it could not be opened)."""
    storage = ref.get("storage")
    if not storage:
        return None, "the study was kept in memory (hydra.sweeper.storage=null)"
    if str(storage).startswith("sqlite:///") and not Path(str(storage)[len("sqlite:///"):]).is_file():
        return None, f"{storage} does not exist"  # opening it would create an empty study database
    try:
        import optuna  # an optional extra (seq2seq[optuna]), needed only for this summary
    except ImportError:
        return None, "optuna is not installed (pip install 'seq2seq[optuna]'): the trial's number is unknown"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)  # schema checks are logged at INFO
    try:
        return optuna.load_study(study_name=ref["study_name"], storage=storage), ""
    except Exception as e:  # noqa: BLE001 -- a study that cannot be read leaves the table as it is
        return None, f"cannot open study {ref['study_name']!r} in {storage}: {e}"


def _summary(ref: dict[str, Any], study: Any) -> dict[str, Any]:
    """The study as Optuna has it: trials per state and the best trial."""
    counts = Counter(trial.state.name.lower() for trial in study.trials)
    try:
        best = study.best_trial
    except ValueError:  # no trial has completed yet
        best = None
    return {"study_name": ref["study_name"], "storage": ref.get("storage"), "direction": ref.get("direction"),
            "objective": ref.get("objective"), "trials": dict(sorted(counts.items())),
            "best_trial": None if best is None else {"number": best.number, "value": best.value,
                                                     "params": dict(best.params)}}


def _from_results(ref: dict[str, Any], results: list[dict[str, Any]], note: str) -> dict[str, Any]:
    """The study as the sweeper's newest optimization_results.yaml has it: no trial number, no counts."""
    best = results[0] if results else None
    return {"study_name": ref.get("study_name"), "storage": ref.get("storage"), "direction": ref.get("direction"),
            "objective": ref.get("objective"), "trials": None,
            "best_trial": None if best is None else {"number": None, "value": best.get("best_value"),
                                                     "params": best["best_params"]},
            "note": note}


def read_studies(paths: list[Path], runs: list[Path], names: list[str],
                 settings: list[dict[str, str]]) -> list[dict[str, Any]]:
    """The Optuna studies of the runs (`runs`, named `names` in the table, with their command-line
    `settings`): one summary per study that their STUDY_FILEs name, [] when there is none.

    A summary: study_name, storage, direction, objective, trials (count per state: complete, fail,
    running, ...), best_trial ({number, value, params}, or None before a trial completed), run (the
    table's name for the best trial's run folder, or None when it is not among `runs`) and note (why the
    study could not be opened, when the summary comes from optimization_results.yaml instead)."""
    refs: dict[tuple[str, str], dict[str, Any]] = {}
    for run in runs:
        ref = _read_yaml(run / STUDY_FILE)
        if ref.get("study_name"):
            refs.setdefault((str(ref["study_name"]), str(ref.get("storage"))), ref)
    # The sweeper's summaries in the folders given and in the runs' sweep folders, the newest first: the
    # last invocation of a resumed study summarises all its trials.
    files = {folder / RESULTS_FILE for folder in [*paths, *(run.parent for run in runs)]}
    files = sorted((f for f in files if f.is_file()), key=lambda f: f.stat().st_mtime, reverse=True)
    results = [r for r in map(_read_yaml, files) if isinstance(r.get("best_params"), dict)]
    summaries = []
    for ref in refs.values():
        study, note = _load_study(ref)
        summaries.append(_summary(ref, study) if study is not None else _from_results(ref, results, note))
    if not refs and results:  # trials whose runs recorded no study (runs of an older seq2seq-train)
        summaries.append(_from_results({}, results, f"from {RESULTS_FILE}: no run records its study"))
    for summary in summaries:
        best = summary["best_trial"]
        summary["run"] = next((name for name, s in zip(names, settings)
                               if best is not None and _matches(best["params"], s)), None)
    return summaries


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def study_lines(summary: dict[str, Any]) -> list[str]:
    """The summary as markdown lines, for under the table."""
    name = f"`{summary['study_name']}`" if summary["study_name"] else "(unnamed)"
    head = f"Optuna study {name}"
    if summary.get("storage"):
        head += f" ({summary['storage']})"
    if summary.get("direction") and summary.get("objective"):
        head += f", {summary['direction']} {summary['objective']}"
    if summary.get("trials"):
        total = sum(summary["trials"].values())
        states = ", ".join(f"{n} {state}" for state, n in sorted(summary["trials"].items()))
        head += f": {total} trials ({states})"
    lines = [head + "."]
    best = summary["best_trial"]
    if best is None:
        lines.append("No trial has completed yet.")
    else:
        number = "?" if best["number"] is None else best["number"]
        where = f"run {summary['run']}" if summary.get("run") else "not among these runs"
        params = ", ".join(f"{k}={_short(v)}" for k, v in best["params"].items())
        lines.append(f"Best trial {number} ({where}): {_short(best['value'])}; {params}.")
    if summary.get("note"):
        lines.append(f"({summary['note']})")
    return lines
