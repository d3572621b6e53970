"""The training ladder: the console script end to end, checkpoints, reload, determinism, BLEU parity."""

from __future__ import annotations

import gzip
import json

import pytest
import torch

from seq2seq.checkpoint import load_for_translation
from seq2seq.train import train
from seq2seq.translator import Translator

from .helpers import TINY, compose_train, read_metrics, run_script, series


def test_fast_dev_run_through_the_console_script(tmp_path, multi30k_dir):
    run_dir = tmp_path / "run"
    proc = run_script("train", *TINY, "debug=fast_dev_run", f"paths.data_dir={tmp_path / 'data'}",
                      f"hydra.run.dir={run_dir}")
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert "error" not in proc.stderr.lower().split("warning")[0]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, multi30k_dir):
    """One real tiny training run through `python -m seq2seq.train` on a Multi30k slice."""
    tmp = tmp_path_factory.mktemp("tiny")
    run_dir = tmp / "run"
    proc = run_script("train", *TINY, f"paths.data_dir={tmp / 'data'}", f"hydra.run.dir={run_dir}")
    return run_dir, proc


def test_run_folder_holds_config_logs_checkpoints_and_test_output(tiny_run):
    run_dir, proc = tiny_run
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert (run_dir / "checkpoints" / "best.ckpt").is_file()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    hyp = run_dir / "checkpoints" / "test_2016_flickr.de-en.hyp"
    assert len(hyp.read_text(encoding="utf-8").splitlines()) == 1000
    scores = json.loads((run_dir / "checkpoints" / "test_2016_flickr.de-en.scores.json").read_text())
    assert scores["cased"]["signature"]["bleu"].startswith("nrefs:1|case:mixed")
    assert scores["lowercase"]["signature"]["bleu"].startswith("nrefs:1|case:lc")
    assert "test (test_2016_flickr, de->en)" in proc.stdout
    rows = read_metrics(run_dir)
    for key in ("train/loss", "train/ppl", "train/grad_norm", "val/bleu", "val/chrf", "val/ter", "val/ppl"):
        assert series(rows, key), f"{key} was never logged"
    assert any(k.startswith("lr-") for k in rows[0])


def test_checkpoint_reloads_with_identical_greedy_output(tiny_run, multi30k_dir):
    run_dir, _ = tiny_run
    best = run_dir / "checkpoints" / "best.ckpt"
    written = (run_dir / "checkpoints" / "test_2016_flickr.de-en.hyp").read_text(encoding="utf-8").splitlines()
    model, tokenizer, search_cfg, _ = load_for_translation(best)
    sources = gzip.open(multi30k_dir / "test_2016_flickr.de.gz", "rt", encoding="utf-8").read().splitlines()[:64]
    again = [t.text for t in Translator(model, tokenizer, search_cfg).translate(sources)]
    assert again == written[:64]


def test_validation_bleu_equals_translate_plus_score(tiny_run, multi30k_dir, tmp_path):
    """The last validation's BLEU equals seq2seq-translate + seq2seq-score on last.ckpt."""
    run_dir, _ = tiny_run
    rows = read_metrics(run_dir)
    val_bleu = series(rows, "val/bleu")[-1]
    n = 50  # debug=tiny validates on the first 50 pairs
    src = tmp_path / "val.de"
    ref = tmp_path / "val.en"
    for lang, path in (("de", src), ("en", ref)):
        lines = gzip.open(multi30k_dir / f"val.{lang}.gz", "rt", encoding="utf-8").read().splitlines()[:n]
        path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    hyp = tmp_path / "val.hyp"
    run_script("translate", "--checkpoint", str(run_dir / "checkpoints" / "last.ckpt"), "--input", str(src),
               "--output", str(hyp), "--quiet")
    proc = run_script("score", "--hyp", str(hyp), "--ref", str(ref), "--json")
    assert json.loads(proc.stdout)["scores"]["bleu"]["score"] == pytest.approx(val_bleu, abs=1e-6)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_same_seed_gives_identical_loss_curves(tmp_path, multi30k_dir, cell):
    overrides = [*TINY, f"model.cell={cell}", "model.bidirectional=true", "deterministic=true",
                 "test_after_training=false", f"paths.data_dir={tmp_path / 'data'}", "trainer.max_steps=5",
                 "callbacks=none", "model.dropout=0.3"]
    curves = []
    for run in ("a", "b"):
        torch.manual_seed(len(curves) + 100)  # disturb the global RNG: the run must reseed it
        cfg = compose_train(overrides, tmp_path / run)
        train(cfg)
        curves.append(series(read_metrics(tmp_path / run), "train/loss"))
    assert len(curves[0]) == 5
    assert curves[0] == curves[1]
