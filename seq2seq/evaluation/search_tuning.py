"""Search tuning: beam size and length penalty chosen on the validation split, stored in the checkpoint
as its search defaults (`seq2seq-tune-search`, cli/tune_search.py; `seq2seq-train test_tune_search=true`).

Every point of the grid (beam sizes x length penalties; beam size 1 is greedy search, which has no
length penalty, so it is decoded once) translates the whole split and is scored by BLEU, chrF and the
hypothesis/reference length ratio. The best point by the run's `validation.metric` (BLEU when that
metric does not depend on the search: ppl, loss) wins; a tie goes to the point listed first.

The winner replaces `beam_size`, `length_penalty` and `min_len` in the checkpoint's stored config
(`seq2seq["config"]["search"]`), which is where every tool reads "the checkpoint's defaults" from
(`checkpoint.loading.load_for_translation`), and `seq2seq["search_tuning"]` records how: split, metric,
grid, scores, and the defaults it replaced. Nothing else changes, so the checkpoint stays loadable and
resumable. An ensemble's search (`tune_ensemble`) belongs to no one member: it is reported as the flags
of `seq2seq-translate --ensemble`, never stored.
"""
from __future__ import annotations

import dataclasses
import logging
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from seq2seq.checkpoint.format import PAYLOAD_KEY, atomic_torch_save, read_checkpoint
from seq2seq.checkpoint.loading import load_for_translation, load_members
from seq2seq.config import METRIC_MODES, ConfigError, DataConfig, SearchConfig, check_search_grid, section
from seq2seq.data.corpus import find_corpus_files, read_parallel
from seq2seq.decoding.search import Ensemble
from seq2seq.decoding.translator import Translator
from seq2seq.evaluation.metrics import make_metric, score_corpus
from seq2seq.model.precision import precision_dtype

log = logging.getLogger(__name__)

TUNING_KEY = "search_tuning"  # in checkpoint["seq2seq"]: how the stored search defaults were chosen
TUNED = ("beam_size", "length_penalty", "min_len")  # the search defaults tuning writes
SEARCH_METRICS = ("bleu", "chrf", "ter")  # validation metrics that depend on the search


def selection_metric(metric: str) -> str:
    """The metric that picks the grid point: the run's validation metric, or BLEU when that one does
    not depend on the search (perplexity, loss)."""
    return metric if metric in SEARCH_METRICS else "bleu"


def validation_text(config: dict[str, Any], root: str | None = None) -> tuple[str, list[str], list[str]]:
    """(split name, sources, references) of the validation split named by a checkpoint's data config,
    found as training finds it; `root` replaces `data.root`. Raises CorpusError naming what is missing."""
    data = section(DataConfig, config.get("data"), "data")
    if root is not None:
        data = dataclasses.replace(data, root=root)
    src, tgt = read_parallel(*find_corpus_files(data, data.valid_split))
    if data.max_valid_pairs > 0:  # training validated on these only (data/cache.py)
        src, tgt = src[: data.max_valid_pairs], tgt[: data.max_valid_pairs]
    return data.valid_split, src, tgt


def run_grid(model: Any, tokenizer: Any, search_cfg: Any, sources: Sequence[str], references: Sequence[str],
             beam_sizes: Sequence[int], length_penalties: Sequence[float], device: Any = "cpu",
             dtype: Any = None, report: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Translate `sources` at every grid point and score it -> one row per point, in grid order:
    beam_size, length_penalty (None for beam 1: greedy search has none), bleu, chrf, ter, ratio, seconds.
    `report(row)` is called as each row is done."""
    points = [(1, None)] if 1 in beam_sizes else []
    points += [(b, lp) for b in beam_sizes if b != 1 for lp in length_penalties]
    points.sort(key=lambda p: beam_sizes.index(p[0]))  # the user's beam order
    rows = []
    for beam, lp in points:
        cfg = dataclasses.replace(search_cfg, beam_size=beam,
                                  length_penalty=search_cfg.length_penalty if lp is None else lp)
        start = time.perf_counter()
        hyps = [t.text for t in Translator(model, tokenizer, cfg, device=device, dtype=dtype).translate(list(sources))]
        seconds = time.perf_counter() - start
        bleu = make_metric("bleu").corpus_score(hyps, [list(references)])
        other = score_corpus(hyps, [references], metrics=("chrf", "ter"))
        rows.append({"beam_size": beam, "length_penalty": lp, "bleu": float(bleu.score), "chrf": other["chrf"],
                     "ter": other["ter"], "ratio": bleu.sys_len / max(bleu.ref_len, 1), "seconds": seconds})
        if report is not None:
            report(rows[-1])
    return rows


def best_row(rows: Sequence[dict[str, Any]], metric: str) -> dict[str, Any]:
    """The row with the best `metric` (max or min per METRIC_MODES); the first of equal ones."""
    sign = 1.0 if METRIC_MODES[metric] == "max" else -1.0
    best = rows[0]
    for row in rows[1:]:
        if sign * row[metric] > sign * best[metric]:
            best = row
    return best


TABLE_HEADER = f"{'beam':>4}  {'lp':>5}  {'BLEU':>6}  {'chrF':>6}  {'ratio':>6}  {'seconds':>8}"


def table_line(r: dict[str, Any]) -> str:
    """One row of the grid table (lp '-': greedy search; ratio: hypothesis / reference length, BLEU's)."""
    lp = "-" if r["length_penalty"] is None else f"{r['length_penalty']:.2f}"
    return f"{r['beam_size']:>4}  {lp:>5}  {r['bleu']:>6.2f}  {r['chrf']:>6.2f}  {r['ratio']:>6.3f}  {r['seconds']:>8.1f}"


def store_search_defaults(path: str | Path, defaults: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    """Write `defaults` (keys of TUNED) into checkpoint `path` as its search defaults, and `record` as
    its `search_tuning` entry; atomic. Returns the previous values of the keys."""
    read_checkpoint(path)  # the checks (and errors naming the file) of every reader
    ckpt = torch.load(path, map_location="cpu", weights_only=True)  # whole, not mapped: the file is replaced
    search = ckpt[PAYLOAD_KEY]["config"]["search"]
    stored = section(SearchConfig, search, "search")  # a checkpoint older than a key has its default
    previous = {k: getattr(stored, k) for k in TUNED}
    search.update(defaults)
    ckpt[PAYLOAD_KEY][TUNING_KEY] = {**record, "previous": previous}
    atomic_torch_save(ckpt, path)
    return previous


def grid_record(model: Any, tokenizer: Any, search_cfg: Any, config: dict[str, Any], label: str,
                sources: Sequence[str], references: Sequence[str], split: str,
                beam_sizes: Sequence[int] | None, length_penalties: Sequence[float] | None, min_len: int | None,
                device: Any, dtype: Any, out: Any) -> dict[str, Any]:
    """Run the grid for `model` (a Seq2Seq or an Ensemble, `label` naming it) on (sources, references),
    print the table and the winner -> the record: split, sentences, metric, score, chosen (the TUNED
    keys), grid (the rows), time. None: the search config's own grid and min_len."""
    beam_sizes = list(search_cfg.tune_beam_sizes if beam_sizes is None else beam_sizes)
    length_penalties = list(search_cfg.tune_length_penalties if length_penalties is None else length_penalties)
    check_search_grid(beam_sizes, length_penalties, "--beam-sizes", "--length-penalties")
    if min_len is not None:
        if min_len < 0:
            raise ConfigError(f"--min-len must be >= 0 (0 = no minimum), got {min_len}")
        search_cfg = dataclasses.replace(search_cfg, min_len=min_len)
    metric = selection_metric(str(config.get("validation", {}).get("metric", "bleu")))
    print(f"tuning the search of {label} on '{split}' ({len(sources)} sentences) by {metric}: beam sizes "
          f"{beam_sizes} x length penalties {length_penalties}, min_len {search_cfg.min_len}", file=out, flush=True)
    print(TABLE_HEADER, file=out, flush=True)
    rows = run_grid(model, tokenizer, search_cfg, sources, references, beam_sizes, length_penalties, device, dtype,
                    report=lambda row: print(table_line(row), file=out, flush=True))
    chosen = best_row(rows, metric)
    print(f"best by {metric}: {table_line(chosen).strip()}", file=out)
    defaults = {"beam_size": chosen["beam_size"], "min_len": search_cfg.min_len,
                "length_penalty": (search_cfg.length_penalty if chosen["length_penalty"] is None
                                   else chosen["length_penalty"])}
    return {"split": split, "sentences": len(sources), "metric": metric, "score": chosen[metric],
            "chosen": defaults, "grid": rows, "time": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def tune_checkpoint(path: str | Path, sources: Sequence[str], references: Sequence[str], split: str,
                    beam_sizes: Sequence[int] | None = None, length_penalties: Sequence[float] | None = None,
                    min_len: int | None = None, device: Any = "cpu", dtype: Any = None,
                    dry_run: bool = False, out: Any = None) -> dict[str, Any]:
    """Run the grid for checkpoint `path` on (sources, references), print the table and what changes,
    and (unless `dry_run`) store the best point. None: the checkpoint's own grid and min_len.
    Returns the record (as stored under `search_tuning`)."""
    out = out or sys.stdout
    model, tokenizer, search_cfg, config = load_for_translation(path, device)
    stored = {k: getattr(search_cfg, k) for k in TUNED}
    record = grid_record(model, tokenizer, search_cfg, config, str(path), sources, references, split, beam_sizes,
                         length_penalties, min_len, device, dtype, out)
    metric, defaults, rows = record["metric"], record["chosen"], record["grid"]
    if dry_run:
        changes = ", ".join(f"{k} {stored[k]} -> {defaults[k]}" for k in TUNED if stored[k] != defaults[k]) or "none"
        print(f"dry run: {path} left as it is; the best point would change: {changes}", file=out)
        return record
    previous = store_search_defaults(path, defaults, record)
    changes = ", ".join(f"{k} {previous[k]} -> {defaults[k]}" for k in TUNED if previous[k] != defaults[k]) or "none"
    old = next((r for r in rows if r["beam_size"] == previous["beam_size"] and previous["min_len"] == defaults["min_len"]
                and r["length_penalty"] in (None, previous["length_penalty"])), None)
    was = f", previous defaults {old[metric]:.2f}" if old is not None else ""
    print(f"{path}: search defaults tuned on '{split}' by {metric} ({record['score']:.2f}{was}); changed: {changes}",
          file=out)
    return record


def translate_flags(chosen: dict[str, Any]) -> str:
    """The seq2seq-translate options that give the search of `chosen` (the TUNED keys)."""
    return f"--beam-size {chosen['beam_size']} --length-penalty {chosen['length_penalty']} --min-len {chosen['min_len']}"


def tune_ensemble(paths: Sequence[str | Path], sources: Sequence[str], references: Sequence[str], split: str,
                  beam_sizes: Sequence[int] | None = None, length_penalties: Sequence[float] | None = None,
                  min_len: int | None = None, device: Any = "cpu", dtype: Any = None,
                  out: Any = None) -> dict[str, Any]:
    """Run the grid for the ensemble of `paths` (per-step log-probabilities averaged, as
    `seq2seq-translate --ensemble`); the grid, min_len and metric default to the first member's.
    No checkpoint is written: an ensemble's search defaults belong to no one member, so the record
    (also "checkpoints" and "translate_flags") says which flags to translate with."""
    out = out or sys.stdout
    models, tokenizer, search_cfg, config = load_members(list(paths), device)
    label = f"the ensemble of {len(models)} ({', '.join(map(str, paths))})"
    record = grid_record(Ensemble(models), tokenizer, search_cfg, config, label, sources, references, split,
                         beam_sizes, length_penalties, min_len, device, dtype, out)
    flags = translate_flags(record["chosen"])
    print(f"the ensemble's best search on '{split}' by {record['metric']} ({record['score']:.2f}); translate with: "
          f"seq2seq-translate --ensemble {' '.join(map(str, paths))} {flags}", file=out)
    return {**record, "checkpoints": [str(p) for p in paths], "translate_flags": flags}


def tune_after_training(best: str, trainer: Any, datamodule: Any, search_cfg: Any) -> None:
    """`test_tune_search`: the grid of `search_cfg` on the prepared validation split, with the best checkpoint
    `best` (training/average_last.best_checkpoint_path), stored into it (on rank 0, before the test reads it),
    on the trainer's device and precision. Without a best checkpoint: a warning."""
    if not best or not Path(best).is_file():
        log.warning("test_tune_search: no best checkpoint (no validation ran, or callbacks=none): search not tuned")
        return
    valid = datamodule.corpus.splits["valid"]
    device = trainer.strategy.root_device
    tune_checkpoint(best, valid.src_text, valid.tgt_text, datamodule.data_cfg.valid_split,
                    search_cfg.tune_beam_sizes, search_cfg.tune_length_penalties, search_cfg.min_len,
                    device, precision_dtype(trainer.precision, device.type))


def parse_list(text: str, kind: type, flag: str) -> list:
    try:
        return [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        what = "integers" if kind is int else "numbers"
        raise ConfigError(f"{flag} must be a comma-separated list of {what}, got {text!r}") from None
