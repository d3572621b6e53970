"""Ordinary Trainer settings: every run ends normally, leaves checkpoints/last.ckpt where checkpointing is
on, and resumes from it; settings that cannot work stop with a one-line error before training. Settings
that do not interfere share a run (a tiny model on a synthetic corpus of 15 training batches per epoch:
seconds per run); the module shares one corpus cache. The runs call `train(cfg)`, what `seq2seq-train`
runs, in this process (each console start costs seconds of imports; DDP workers are spawned from it).
"""

from __future__ import annotations

import json

import pytest
import torch

from seq2seq.config import ConfigError
from seq2seq.training.run import train, user_errors

from .conftest import synthetic_pairs, write_lines
from .helpers import TINY, compose_train, read_metrics, series


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """(overrides every run shares, a folder for the runs). The corpus has an extra split, test_b."""
    tmp = tmp_path_factory.mktemp("grid")
    for split, n, seed in (("train", 200, 1), ("val", 20, 2), ("test_2016_flickr", 12, 3), ("test_b", 10, 4)):
        src, tgt = synthetic_pairs(n, seed)
        write_lines(tmp / "corpus" / f"{split}.de", src)
        write_lines(tmp / "corpus" / f"{split}.en", tgt)
    common = [*TINY, f"data.root={tmp / 'corpus'}", "data.corpus=toy", "data.mirrors=[]", "data.download=false",
              "data.tokenizer.vocab_size=60", "data.tokenizer.byte_fallback=false", "data.max_train_pairs=0",
              "data.max_valid_pairs=0", "batching.max_tokens=300", f"paths.data_dir={tmp / 'data'}",
              "trainer.max_epochs=1000"]
    return common, tmp


def last_step(run_dir) -> int:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"]


def test_max_steps_between_validations_every_second_epoch_then_resume_with_several_test_sets(grid, capsys, caplog):
    """`trainer.max_steps` ending mid-epoch before any validation, with `check_val_every_n_epoch=2`
    (Lightning's ModelCheckpoint then never saves at an epoch end) and validation.metric=ter: last.ckpt
    holds that step, the test falls back to it; the resumed run validates at the end of the second epoch
    and scores test_2016_flickr and data.test_splits=[test_b] in one table and test_scores.json.
    Mutations that make it fail: `LastCheckpoint.on_train_epoch_end` not saving (no last.ckpt);
    saving in `on_train_end` instead (epoch 0 then counts as complete: the resumed run validates at
    step 15, not 30); `train.score_test_sets` scoring only test_split."""
    common, tmp = grid
    run_dir = tmp / "every2"
    args = [*common, "trainer.check_val_every_n_epoch=2", "trainer.val_check_interval=1.0", "validation.metric=ter"]
    train(compose_train([*args, "trainer.max_steps=4"], run_dir))
    assert last_step(run_dir) == 4
    assert not (run_dir / "checkpoints" / "best.ckpt").exists()  # no validation ran
    assert "testing the last one" in caplog.text
    capsys.readouterr()
    train(compose_train([*args, "trainer.max_steps=32", "ckpt_path=last", "data.test_splits=[test_b]"], run_dir))
    stdout = capsys.readouterr().out
    assert last_step(run_dir) == 32
    rows = read_metrics(run_dir)
    assert [int(r["step"]) for r in rows if r.get("val/ter")] == [29]  # end of epoch 1 (15 batches each), 0-based
    report = json.loads((run_dir / "checkpoints" / "test_scores.json").read_text())
    assert report["checkpoint"].endswith("best.ckpt")
    assert [r["split"] for r in report["splits"]] == ["test_2016_flickr", "test_b"]
    assert [r["sentences"] for r in report["splits"]] == [12, 10]
    table = stdout[stdout.index("test (test_2016_flickr, test_b, de->en) with"):].splitlines()
    assert table[1].split()[:6] == ["split", "sentences", "BLEU", "chrF", "TER", "BLEU(lc)"]
    for line, row in zip(table[2:4], report["splits"]):
        cells = line.split()
        assert cells[:2] == [row["split"], str(row["sentences"])]
        assert [float(c) for c in cells[2:6]] == pytest.approx(
            [row[k] for k in ("bleu", "chrf", "ter", "bleu_lc")], abs=0.006)
        assert cells[-1] == row["signature"]["bleu"]  # after BLEU(moses) when sacremoses is installed
    assert (run_dir / "checkpoints" / "test_b.de-en.hyp").read_text().count("\n") == 10


def test_step_count_validation_with_accumulation_and_batch_limits_resumes(grid):
    """An integer `val_check_interval` with `accumulate_grad_batches=2`, `limit_train_batches=10`,
    `limit_val_batches=1` and validation.metric=ppl; max_steps ends between validations.
    Mutation that makes it fail: `LastCheckpoint.on_train_epoch_end` not saving (last.ckpt holds step 2)."""
    common, tmp = grid
    run_dir = tmp / "steps"
    args = [*common, "trainer.val_check_interval=4", "trainer.accumulate_grad_batches=2",
            "trainer.limit_train_batches=10", "trainer.limit_val_batches=1", "validation.metric=ppl",
            "test_after_training=false"]
    train(compose_train([*args, "trainer.max_steps=3"], run_dir))
    assert last_step(run_dir) == 3
    train(compose_train([*args, "trainer.max_steps=8", "ckpt_path=last"], run_dir))
    assert last_step(run_dir) == 8
    assert len(series(read_metrics(run_dir), "val/ppl")) >= 2
    assert (run_dir / "checkpoints" / "best.ckpt").is_file()


def test_max_time_with_fractional_validation_resumes(grid):
    """`trainer.max_time` (a wall-time budget) with `val_check_interval=0.5` and validation.metric=chrf:
    the run stops by time with its final state in last.ckpt (Lightning validates once more when time
    runs out), and a resumed run with a larger budget goes on from there.
    Mutation that makes it fail: last_checkpoint dropped from conf/callbacks/default.yaml (no last.ckpt)."""
    common, tmp = grid
    run_dir = tmp / "time"
    args = [*common, "trainer.max_steps=-1", "trainer.val_check_interval=0.5", "validation.metric=chrf",
            "test_after_training=false"]
    train(compose_train([*args, "trainer.max_time=00:00:00:03"], run_dir))
    first = last_step(run_dir)
    rows = read_metrics(run_dir)
    assert series(rows, "val/chrf")
    assert first == max(int(r["step"]) for r in rows if r.get("train/loss")) + 1  # logged steps count from 0
    train(compose_train([*args, "trainer.max_time=00:00:00:06", "ckpt_path=last"], run_dir))
    assert last_step(run_dir) > first


def test_no_callbacks_no_test_writes_no_checkpoint(grid):
    """`callbacks=none` with validation.metric=loss and test_after_training=false: exit 0, validation
    logged, and no checkpoint anywhere (Lightning's own default ModelCheckpoint stays off).
    Mutation that makes it fail: `enable_checkpointing=checkpointing` dropped from train.train."""
    common, tmp = grid
    run_dir = tmp / "none"
    train(compose_train([*common, "callbacks=none", "validation.metric=loss", "test_after_training=false",
                         "trainer.max_steps=4", "trainer.val_check_interval=3"], run_dir))
    assert series(read_metrics(run_dir), "val/loss")
    assert not list(run_dir.rglob("*.ckpt"))


@pytest.mark.parametrize("overrides, message", [
    (["trainer.val_check_interval=25"], "config key 'trainer.val_check_interval' is 25, more than the 15 training"),
    (["trainer.limit_train_batches=0.01"], "config key 'trainer.limit_train_batches' is 0.01"),
    (["trainer.accumulate_grad_batches=0"], "config key 'trainer.accumulate_grad_batches' must be an integer >= 1"),
    (["trainer.val_check_interval=1.5"], "config key 'trainer': You have passed invalid value 1.5"),
    (["trainer.check_val_every_n_epoch=null", "trainer.val_check_interval=0.5"], "config key 'trainer': "),
])
def test_settings_that_cannot_work_are_refused_before_training(grid, tmp_path, overrides, message):
    """Mutations that make it fail: `train.check_schedule` not called (the first three: Lightning raises
    its own ValueError, or ZeroDivisionError, inside fit); `train.instantiate_trainer` letting Lightning's
    exception through (the last two)."""
    common, _ = grid
    cfg = compose_train([*common, *overrides], tmp_path / "run")
    with pytest.raises(ConfigError, match="^" + message.replace("(", r"\(").replace(".", r"\.")):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_missing_test_split_is_an_error_at_start(grid):
    """A user error (`seq2seq-train` reports those as one `error:` line with exit status 2, see
    tests/test_bad_inputs.py), raised before the corpus is prepared.
    Mutation that makes it fail: `read_test_sets` called after training (the run trains first)."""
    common, tmp = grid
    cfg = compose_train([*common, "data.test_splits=[test_b,test_2017]", f"paths.data_dir={tmp / 'missing_data'}"],
                        tmp / "missing")
    with pytest.raises(user_errors(), match="cannot find the 'test_2017' split of corpus 'toy'"):
        train(cfg)
    assert not (tmp / "missing_data").exists()  # stopped before the corpus was prepared


def test_ddp_two_processes_stop_before_validation_then_resume_with_step_validation(grid, capsys,
                                                                                    ddp_launch_env):
    """The short grid under `trainer=ddp_cpu trainer.devices=2` (spawned workers, launched from this
    process): max_steps before the first validation (last.ckpt written), then a resumed run with an
    integer val_check_interval and accumulation that validates, keeps best.ckpt and tests it.
    Here Lightning's own ModelCheckpoint writes last.ckpt at step 3 as well: `LastCheckpoint` not saving,
    or saving on rank 0 only, does not make this test fail (the single-process tests above catch the first)."""
    common, tmp = grid
    run_dir = tmp / "ddp"
    args = [*common, "trainer=ddp_cpu", "trainer.devices=2"]
    train(compose_train([*args, "trainer.max_steps=3", "trainer.val_check_interval=1.0", "test_after_training=false"],
                        run_dir))
    assert last_step(run_dir) == 3
    capsys.readouterr()
    train(compose_train([*args, "trainer.max_steps=8", "trainer.val_check_interval=4",
                         "trainer.accumulate_grad_batches=2", "ckpt_path=last"], run_dir))
    assert last_step(run_dir) == 8
    assert series(read_metrics(run_dir), "val/bleu")
    stdout = capsys.readouterr().out
    assert "test (test_2016_flickr, de->en) with" in stdout and (run_dir / "checkpoints" / "test_scores.json").is_file()
