"""The training ladder: the console script end to end, checkpoints, reload, determinism, BLEU parity."""

from __future__ import annotations

import json

import pytest
import torch

from seq2seq.checkpoint.loading import load_for_translation
from seq2seq.training.run import train
from seq2seq.decoding.translator import Translator

from .helpers import TINY, compose_train, read_metrics, require, run_script, series


def test_fast_dev_run_through_the_console_script(tmp_path, multi30k_dir):
    """`seq2seq-train debug=fast_dev_run` (one training and one validation batch) runs end to end; with
    the tiny model: both presets as a list (a second `debug=` would replace TINY's `debug=tiny`, and the
    one batch of the default model takes most of a minute)."""
    run_dir = tmp_path / "run"
    tiny = [o for o in TINY if o != "debug=tiny"]
    proc = run_script("train", "debug=[tiny,fast_dev_run]", *tiny, f"paths.data_dir={tmp_path / 'data'}",
                      f"hydra.run.dir={run_dir}")
    config = (run_dir / ".hydra" / "config.yaml").read_text()
    assert "fast_dev_run: true" in config and "embedding_size: 32" in config  # both presets
    assert "error" not in proc.stderr.lower().split("warning")[0]


@pytest.fixture(scope="module")
def tiny_run(learned_run):
    """One real tiny training run through `python -m seq2seq.cli.train`, on the learnable toy pair, long
    enough (200 steps, seconds) for the model to translate: its scores are not the trivial 0. Read only:
    tests/test_translate.py translates with its best.ckpt (conftest's `learned_run`)."""
    return learned_run


def read(path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def test_run_folder_holds_config_logs_checkpoints_and_test_output(tiny_run, learnable_corpus):
    """The run folder of `seq2seq-train`, its test table, its logged metrics; its output carries no
    third-party notice the user cannot act on (Lightning's litlogger advert, torch's LeafSpec deprecation).
    Mutation that makes it fail: `trainer.quiet_third_party` doing nothing."""
    run_dir, proc = tiny_run
    for noise in ("litlogger", "LeafSpec"):
        assert noise not in proc.stdout + proc.stderr
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert (run_dir / "checkpoints" / "best.ckpt").is_file()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    hyp = run_dir / "checkpoints" / "test_2016_flickr.de-en.hyp"
    assert len(read(hyp)) == len(read(learnable_corpus / "test_2016_flickr.en"))
    scores = json.loads((run_dir / "checkpoints" / "test_2016_flickr.de-en.scores.json").read_text())
    assert scores["cased"]["signature"]["bleu"].startswith("nrefs:1|case:mixed")
    assert scores["lowercase"]["signature"]["bleu"].startswith("nrefs:1|case:lc")
    assert scores["cased"]["bleu"] > 5  # the model learned the toy pair: the test figures mean something
    assert "test (test_2016_flickr, de->en)" in proc.stdout and "\ntest_2016_flickr " in proc.stdout
    rows = read_metrics(run_dir)
    for key in ("train/loss", "train/ppl", "train/grad_norm", "val/bleu", "val/chrf", "val/ter", "val/ppl"):
        assert series(rows, key), f"{key} was never logged"
    assert any(k.startswith("lr-") for k in rows[0])


def test_run_ends_with_moses_bleu_and_training_curves(tiny_run):
    """With sacremoses and matplotlib installed (the dev extras), the end of a run prints the lowercased
    Moses-tokenized BLEU beside the 13a figures, stores it in the scores file, and draws plots/curves.png;
    WallClock's time/elapsed_s follows every validation row. Mutations that make it fail: conf/train.yaml
    with `plot_curves: false`; train.evaluate without its `moses_lang` argument; WallClock.on_validation_end
    returning at once (the validations would take the next training row's time)."""
    require("sacremoses")
    require("matplotlib")
    run_dir, proc = tiny_run
    scores = json.loads((run_dir / "checkpoints" / "test_2016_flickr.de-en.scores.json").read_text())
    assert scores["moses"]["signature"]["bleu"].startswith("nrefs:1|case:lc|eff:no|tok:moses-en|")
    assert 0 < scores["moses"]["bleu"] <= 100
    table = json.loads((run_dir / "checkpoints" / "test_scores.json").read_text())["splits"][0]
    assert table["bleu_moses"] == scores["moses"]["bleu"]
    assert "BLEU(moses)" in proc.stdout and f"BLEU(moses) signature: {scores['moses']['signature']['bleu']}" in proc.stdout
    png = run_dir / "plots" / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    rows = read_metrics(run_dir)
    validations = [i for i, r in enumerate(rows) if r.get("val/bleu")]
    assert validations and all(rows[i + 1].get("time/elapsed_s") and rows[i + 1]["step"] == rows[i]["step"]
                               for i in validations)
    assert series(rows, "time/elapsed_s") == sorted(series(rows, "time/elapsed_s"))


def test_moses_bleu_switch_is_checked_before_training(tmp_path, monkeypatch, caplog):
    """A target language without Moses rules is a config error before training (not after it); without
    sacremoses one log line says how to install it, and the run goes on."""
    require("sacremoses")
    import logging
    import sys

    from seq2seq.config import ConfigError, hydra_errors
    from seq2seq.training.run import moses_language

    cfg = compose_train(TINY, tmp_path)
    assert moses_language(cfg, "fr") == "fr"
    with pytest.raises(ConfigError, match="'test_moses_bleu' is true, but 'data.tgt_lang' 'xx' has no Moses"):
        moses_language(cfg, "xx")
    assert moses_language(compose_train([*TINY, "test_moses_bleu=false"], tmp_path), "xx") is None
    with pytest.raises(ConfigError, match="'test_moses_bleu' must be true or false"), hydra_errors():
        compose_train([*TINY, "test_moses_bleu=maybe"], tmp_path)  # the schema refuses it while composing
    monkeypatch.setitem(sys.modules, "sacremoses", None)  # not installed
    with caplog.at_level(logging.INFO, logger="seq2seq.training.run"):
        assert moses_language(cfg, "fr") is None
    assert "pip install 'seq2seq[moses]'" in caplog.text


def test_checkpoint_reloads_with_identical_greedy_output(tiny_run, learnable_corpus):
    run_dir, _ = tiny_run
    best = run_dir / "checkpoints" / "best.ckpt"
    written = read(run_dir / "checkpoints" / "test_2016_flickr.de-en.hyp")
    model, tokenizer, search_cfg, _ = load_for_translation(best)
    sources = read(learnable_corpus / "test_2016_flickr.de")
    again = [t.text for t in Translator(model, tokenizer, search_cfg).translate(sources)]
    assert again == written
    assert sum(h == r for h, r in zip(written, read(learnable_corpus / "test_2016_flickr.en"))) >= 3


def test_validation_bleu_equals_translate_plus_score(tiny_run, learnable_corpus, tmp_path):
    """The last validation's BLEU and chrF equal seq2seq-translate + seq2seq-score on last.ckpt
    (README: "their BLEU never disagrees"). The model translates, so BLEU is checked to be far from 0
    first. Mutations that make it fail: scoring validation against the source text
    (lit_module.on_validation_epoch_end: `valid.src_text` for `valid.tgt_text`); seq2seq-translate
    writing empty lines (translate.py: `""` for each translation)."""
    run_dir, _ = tiny_run
    rows = read_metrics(run_dir)
    val_bleu, val_chrf = series(rows, "val/bleu")[-1], series(rows, "val/chrf")[-1]
    assert val_bleu > 5 and val_chrf > 20, (val_bleu, val_chrf)  # non-trivial, or the comparison is empty
    hyp = tmp_path / "val.hyp"
    run_script("translate", "--checkpoint", str(run_dir / "checkpoints" / "last.ckpt"),
               "--input", str(learnable_corpus / "val.de"), "--output", str(hyp), "--quiet")
    proc = run_script("score", "--hyp", str(hyp), "--ref", str(learnable_corpus / "val.en"), "--json")
    scores = json.loads(proc.stdout)["scores"]
    assert scores["bleu"]["score"] == pytest.approx(val_bleu, abs=1e-4)  # logged as float32
    assert scores["chrf"]["score"] == pytest.approx(val_chrf, abs=1e-4)


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


@pytest.mark.filterwarnings("ignore:.*could not find the monitored key")  # no validation yet: expected
def test_max_steps_ending_before_the_first_validation_exits_cleanly_and_resumes(tmp_path, multi30k_dir):
    """`seq2seq-train trainer.max_steps=N` with N short of the first validation (which comes at the
    end of the epoch) ends normally with last.ckpt written, and `ckpt_path=last` continues from it.
    The resumed run continues logs/metrics.csv: the first run's rows stay, rows logged after the
    checkpoint's step (here a planted one, as from a run killed after its last save) go. Both runs call
    `train(cfg)`, what the console script runs, in this process.
    Mutations that make it fail: early stopping checking at train-epoch end as well
    (callbacks/early_stopping.yaml without `check_on_train_epoch_end: false`): its metric was never
    logged, so it raises; conf/logger/csv.yaml naming Lightning's CSVLogger (it deletes metrics.csv);
    `train.continue_csv_logs` not called."""
    run_dir = tmp_path / "run"
    common = [*TINY, "trainer.val_check_interval=1.0", "trainer.max_epochs=5", "test_after_training=false",
              "trainer.log_every_n_steps=1", f"paths.data_dir={tmp_path / 'data'}"]
    train(compose_train([*common, "trainer.max_steps=2"], run_dir))
    last = run_dir / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 2
    first_steps = series(read_metrics(run_dir), "step")
    assert first_steps and max(first_steps) <= 2
    with open(run_dir / "logs" / "metrics.csv", "a") as f:  # a row logged after last.ckpt, before a kill
        header = (run_dir / "logs" / "metrics.csv").read_text().splitlines()[0].split(",")
        f.write(",".join("50" if k == "step" else "" for k in header) + "\n")
    # seq2seq-train hydra.run.dir=<run> ... trainer.max_steps=4 ckpt_path=last
    train(compose_train([*common, "trainer.max_steps=4", "ckpt_path=last"], run_dir))
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 4
    steps = series(read_metrics(run_dir), "step")
    assert steps[:len(first_steps)] == first_steps and 50 not in steps and max(steps) > max(first_steps)
