"""Resume and checkpoint reliability: a killed run continues exactly where it was, checkpoint writes
survive SIGKILL, and non-finite steps are skipped (and stop the run when they keep coming)."""

from __future__ import annotations

import math
import os
import select
import signal
import subprocess
import sys
import textwrap
import time

import lightning.pytorch as pl
import pytest
import torch

from seq2seq.checkpoint.loading import load_for_translation
from seq2seq.training.checkpoint_io import AtomicCheckpointIO
from seq2seq.training.callbacks import TrainingDivergedError
from seq2seq.training.module import TranslationModule
from seq2seq.training.run import train
from seq2seq.decoding.translator import Translator

from .helpers import REPO, TINY, compose_train, read_metrics, series

# Two short epochs of a tiny model with dropout on a 64-pair slice; cheap validation.
BASE = [*TINY, "deterministic=true", "test_after_training=false", "trainer.max_steps=-1", "trainer.max_epochs=2",
        "data.max_train_pairs=24", "data.max_valid_pairs=4", "batching.max_tokens=150",
        "search.max_len_a=2", "search.max_len_b=0.5", "model.dropout=0.3", "model.rnn_dropout=0.0",
        "callbacks.early_stopping.patience=50"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, multi30k_dir):
    """One prepared-data cache shared by every run of this module."""
    return tmp_path_factory.mktemp("resume") / "data"


def overrides(data_dir, *extra: str) -> list[str]:
    return [*BASE, f"paths.data_dir={data_dir}", *extra]


def load(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_training_state(a: dict, b: dict, callbacks: bool = True) -> None:
    """Weights, optimiser, schedule, counters, early stopping and best-checkpoint score all equal."""
    assert a["global_step"] == b["global_step"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), f"parameter {key} differs"
    sa, sb = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    for i in sa:
        for name in sa[i]:
            assert torch.equal(torch.as_tensor(sa[i][name]), torch.as_tensor(sb[i][name])), f"optimizer {i}.{name}"
    assert a["lr_schedulers"] == b["lr_schedulers"]
    for key, state in (a["callbacks"] if callbacks else {}).items():
        other = b["callbacks"][key]
        if key.startswith("EarlyStopping"):
            assert state["wait_count"] == other["wait_count"] and torch.equal(state["best_score"], other["best_score"])
        if key.startswith("ModelCheckpoint"):
            scores = state["best_model_score"], other["best_model_score"]
            assert scores == (None, None) or torch.equal(*scores)


_TRAINING_STEP = TranslationModule.training_step


class SimulatedCrash(Exception):
    pass


class Recorder:
    """Patch TranslationModule.training_step to record (epoch, step, example indices) of every batch."""

    def __init__(self, monkeypatch, fail_at_step: int | None = None):
        self.seen: list[tuple[int, int, tuple[int, ...]]] = []
        self.module: TranslationModule | None = None
        original = _TRAINING_STEP
        recorder = self

        def training_step(module, batch, batch_idx):
            if fail_at_step is not None and module.global_step == fail_at_step:
                raise SimulatedCrash()  # Lightning re-raises it after its own handling
            recorder.module = module
            recorder.seen.append((module.current_epoch, module.global_step, tuple(batch.indices.tolist())))
            return original(module, batch, batch_idx)

        monkeypatch.setattr(TranslationModule, "training_step", training_step)

    def save_final(self, path) -> dict:
        """The state at the end of training (last.ckpt may be older: it is written at validations)."""
        self.module.trainer.save_checkpoint(path)
        return load(path)


MID_EPOCH = ["trainer.val_check_interval=3"]  # validation + last.ckpt every 3 steps, mid-epoch


@pytest.fixture(scope="module")
def straight(tmp_path_factory, data_dir):
    """The uninterrupted reference run: its folder and the (epoch, step, example indices) of every batch."""
    run_dir = tmp_path_factory.mktemp("straight")
    with pytest.MonkeyPatch.context() as mp:
        recorder = Recorder(mp)
        train(compose_train(overrides(data_dir, *MID_EPOCH), run_dir))
        recorder.save_final(run_dir / "final.ckpt")
    return run_dir, recorder.seen


def train_until_sigkill(args: list[str], run_dir, hook: str, when: str) -> None:
    """Run `seq2seq-train args` in a subprocess, as a user would start it, and SIGKILL it from the
    TranslationModule hook `hook` (a signature, e.g. "on_train_epoch_start(self)") once `when` holds."""
    name = hook.split("(")[0]
    code = textwrap.dedent(f"""
        import os, signal, sys
        import torch
        torch.set_num_threads({torch.get_num_threads()})  # as in this process: same float sums, same numbers
        from seq2seq.training.module import TranslationModule
        def {hook}:
            if {when}:
                os.kill(os.getpid(), signal.SIGKILL)
        TranslationModule.{name} = {name}
        sys.argv = ["seq2seq-train", *{args!r}, "hydra.run.dir={run_dir}"]
        from seq2seq.cli.train import main
        main()
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]


def test_sigkill_at_epoch_boundary_then_resume_is_identical(tmp_path, data_dir, straight):
    # The reference validates every 3 steps, this run at epoch ends: validation touches neither the
    # weights nor the random streams, so the training trajectories must be the same.
    args = overrides(data_dir, "trainer.val_check_interval=1.0")  # validation + last.ckpt at each epoch end
    reference = load(straight[0] / "final.ckpt")

    # The same run as a user would start it, SIGKILLed as epoch 1 begins (after epoch 0's last.ckpt).
    run_dir = tmp_path / "killed"
    train_until_sigkill(args, run_dir, "on_train_epoch_start(self)", "self.current_epoch == 1")
    saved = load(run_dir / "checkpoints" / "last.ckpt")
    per_epoch = len([s for s in straight[1] if s[0] == 0])
    assert saved["epoch"] == 0 and saved["global_step"] == per_epoch  # written at the end of epoch 0

    # seq2seq-train hydra.run.dir=<run> ckpt_path=last
    train(compose_train([*args, "ckpt_path=last"], run_dir))
    resumed = load(run_dir / "checkpoints" / "last.ckpt")
    assert_same_training_state(resumed, reference, callbacks=False)
    assert series(read_metrics(run_dir), "train/loss")[-3:] == series(read_metrics(straight[0]), "train/loss")[-3:]


def test_sigkill_mid_epoch_with_callbacks_then_resume_is_identical(tmp_path, data_dir, straight):
    """The reference run's own settings (validation, last.ckpt, early stopping, best checkpoint every 3
    steps), SIGKILLed at step 5 of the first epoch: `ckpt_path=last` resumes at step 3 of that epoch and
    ends in the reference's exact state, callbacks' states included.
    Mutation that makes it fail: TokenBucketBatchSampler.load_state_dict not setting `self._skip`
    (the resumed epoch starts again from its first batch)."""
    args = overrides(data_dir, *MID_EPOCH)
    run_dir = tmp_path / "killed"
    train_until_sigkill(args, run_dir, "on_train_batch_start(self, batch, batch_idx)", "self.global_step == 5")
    saved = load(run_dir / "checkpoints" / "last.ckpt")
    assert saved["epoch"] == 0 and saved["global_step"] == 3  # mid-epoch, from the validation at step 3
    assert saved["callbacks"], "the checkpoint holds the callbacks' states"

    with pytest.MonkeyPatch.context() as mp:
        resumed = Recorder(mp)
        train(compose_train([*args, "ckpt_path=last"], run_dir))
        final = resumed.save_final(tmp_path / "final.ckpt")
    assert resumed.seen == straight[1][3:]  # exactly the batches not yet trained on, in order
    assert_same_training_state(final, load(straight[0] / "final.ckpt"), callbacks=True)


def test_mid_epoch_resume_sees_exactly_the_remaining_batches(tmp_path, data_dir, monkeypatch, straight):
    args = overrides(data_dir, *MID_EPOCH)
    straight_dir, seen = straight
    assert len([s for s in seen if s[0] == 0]) > 5 and {e for e, _, _ in seen} == {0, 1}
    assert [b for e, _, b in seen if e == 0] != [b for e, _, b in seen if e == 1]  # reshuffled every epoch

    crashed = Recorder(monkeypatch, fail_at_step=5)
    with pytest.raises(SimulatedCrash):
        train(compose_train(args, tmp_path / "run"))
    assert crashed.seen == seen[:5]
    saved = load(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert saved["global_step"] == 3 and saved["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]["batches_done"] == 3

    resumed = Recorder(monkeypatch)
    train(compose_train([*args, "ckpt_path=last"], tmp_path / "run"))
    assert resumed.seen[0][:2] == (0, 3)  # continues at the saved step, in the saved epoch
    assert resumed.seen == seen[3:]  # exactly the batches not yet trained on, in order
    final = resumed.save_final(tmp_path / "final.ckpt")
    reference = load(straight_dir / "final.ckpt")
    assert final["epoch"] == reference["epoch"] == 2
    assert_same_training_state(final, reference)


# ---------------------------------------------------------------------- non-finite steps
def test_mid_epoch_resume_with_a_schedule_that_decays_to_the_end(tmp_path, data_dir, monkeypatch, straight):
    """A cosine (or linear) decay over the whole run needs the run's step count when the optimizer is
    built. Asking Lightning for it builds the training loader before a resumed run restores its place in
    the epoch (Lightning-AI/pytorch-lightning#20550): the resumed epoch started over at its first batch.
    Mutation that makes it fail: train() not setting `module.stepping_batches` (Lightning's estimate)."""
    args = overrides(data_dir, *MID_EPOCH, "scheduler.decay=cosine", "scheduler.total_steps=0")
    _, seen = straight  # the data order does not depend on the learning rate
    crashed = Recorder(monkeypatch, fail_at_step=5)
    with pytest.raises(SimulatedCrash):
        train(compose_train(args, tmp_path / "run"))
    assert crashed.seen == seen[:5]
    resumed = Recorder(monkeypatch)
    train(compose_train([*args, "ckpt_path=last"], tmp_path / "run"))
    assert resumed.seen == seen[3:]  # continues after the 3 steps of last.ckpt, in the same epoch


def poison(monkeypatch, steps: set[int] | None = None, from_step: int | None = None, where: str = "loss"):
    """Make the loss (or, with where='grad', one gradient) non-finite at the given optimiser steps."""
    hit = (lambda s: s in steps) if steps is not None else (lambda s: s >= from_step)
    if where == "loss":
        original = TranslationModule._losses

        def _losses(module, batch):
            smoothed, nll, tokens = original(module, batch)
            if module.training and hit(module.global_step):
                smoothed = smoothed * float("nan")
            return smoothed, nll, tokens

        monkeypatch.setattr(TranslationModule, "_losses", _losses)
    else:
        def on_after_backward(module):
            if hit(module.global_step):
                next(module.parameters()).grad.fill_(float("inf"))

        monkeypatch.setattr(TranslationModule, "on_after_backward", on_after_backward, raising=False)


@pytest.mark.parametrize("where", ["loss", "grad"])
def test_non_finite_steps_are_skipped_and_counted(tmp_path, data_dir, monkeypatch, where):
    poison(monkeypatch, steps={1, 2}, where=where)
    train(compose_train(overrides(data_dir, "trainer.max_epochs=1", "trainer.max_steps=6"), tmp_path))
    ckpt = load(tmp_path / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 6
    adam_steps = {int(s["step"]) for s in ckpt["optimizer_states"][0]["state"].values()}
    assert adam_steps == {4}  # 6 steps, 2 skipped: the parameters were updated 4 times
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())
    assert series(read_metrics(tmp_path), "train/skipped_steps")[-1] == 2


def test_too_many_bad_steps_stop_with_a_usable_last_checkpoint(tmp_path, data_dir, monkeypatch):
    poison(monkeypatch, from_step=2)
    with pytest.raises(TrainingDivergedError, match=r"3 consecutive steps had a non-finite loss.*max_bad_steps=3"):
        train(compose_train(overrides(data_dir, "max_bad_steps=3", "trainer.max_epochs=1"), tmp_path))
    last = tmp_path / "checkpoints" / "last.ckpt"
    ckpt = load(last)
    assert ckpt["global_step"] == 5
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())
    model, tokenizer, search_cfg, _ = load_for_translation(last)  # translation reads it and translates
    (out,) = Translator(model, tokenizer, search_cfg).translate(["Ein Hund rennt."])
    assert math.isfinite(out.score)  # finite weights: usable log-probabilities
    monkeypatch.undo()  # the data is fine again: the run resumes from last.ckpt
    train(compose_train(overrides(data_dir, "max_bad_steps=3", "trainer.max_epochs=1", "ckpt_path=last"), tmp_path))
    assert load(last)["global_step"] > 5


# ---------------------------------------------------------------------- out of memory
def run_out_of_memory(monkeypatch, steps: set[int] | None = None, from_step: int | None = None,
                      where: str = "forward"):
    """Make the training step raise torch.OutOfMemoryError, as CUDA's allocator does, in its forward or
    backward pass at the given optimiser steps."""
    hit = (lambda s: s in steps) if steps is not None else (lambda s: s >= from_step)
    if where == "forward":
        original = TranslationModule._losses

        def _losses(module, batch):
            if module.training and hit(module.global_step):
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
            return original(module, batch)

        monkeypatch.setattr(TranslationModule, "_losses", _losses)
    else:
        original = pl.LightningModule.backward

        def backward(module, loss, *args, **kwargs):
            original(module, loss, *args, **kwargs)  # part of the gradients exist when memory runs out
            if hit(module.global_step):
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")

        monkeypatch.setattr(pl.LightningModule, "backward", backward)


@pytest.mark.parametrize("where", ["forward", "backward"])
def test_out_of_memory_steps_are_skipped_counted_and_do_not_advance_the_schedule(tmp_path, data_dir, monkeypatch,
                                                                                 where):
    """An out-of-memory error in a training step skips that update instead of ending the run; it is
    counted (train/oom_steps, train/skipped_steps) and the learning-rate schedule does not advance.
    Mutations that make it fail: TranslationModule.training_step (or .backward) not catching
    torch.OutOfMemoryError (the run dies); WarmupDecayPlateau.applied_updates returning `self.last_epoch`
    (the warm-up advances on the skipped steps)."""
    run_out_of_memory(monkeypatch, steps={1, 2}, where=where)
    warmup, peak = 10, 1e-3
    train(compose_train(overrides(data_dir, "trainer.max_epochs=1", "trainer.max_steps=6", "optim.lr=1e-3",
                                  f"scheduler.warmup_steps={warmup}"), tmp_path))
    ckpt = load(tmp_path / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 6
    adam_steps = {int(s["step"]) for s in ckpt["optimizer_states"][0]["state"].values()}
    assert adam_steps == {4}  # 6 steps, 2 skipped: the parameters were updated 4 times
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())
    rows = read_metrics(tmp_path)
    assert series(rows, "train/oom_steps")[-1] == 2 and series(rows, "train/skipped_steps")[-1] == 2
    # linear warm-up over the updates applied before each step: 0, 1, then 1 and 1 again (steps 1 and 2
    # were skipped), 2, 3
    lrs = series(rows, "lr-Adam")
    assert lrs == pytest.approx([peak * (n + 1) / warmup for n in (0, 1, 1, 1, 2, 3)], rel=1e-6)


def test_repeated_out_of_memory_stops_with_a_usable_last_checkpoint_and_advice(tmp_path, data_dir, monkeypatch):
    """`max_oom_steps` steps in a row out of memory end the run with last.ckpt written and a message that
    names the setting to lower; the run then resumes. Mutation that makes it fail: StepGuard not counting
    out-of-memory runs (`oom` always 0): the run goes on skipping every step to the end of its epoch."""
    from seq2seq.training.callbacks import OutOfMemoryStop

    run_out_of_memory(monkeypatch, from_step=2)
    args = overrides(data_dir, "max_oom_steps=3", "max_bad_steps=10", "trainer.max_epochs=1")
    with pytest.raises(OutOfMemoryStop, match=r"3 consecutive steps ran out of memory \(max_oom_steps=3.*"
                                              r"smaller batching\.max_tokens"):
        train(compose_train(args, tmp_path))
    last = tmp_path / "checkpoints" / "last.ckpt"
    ckpt = load(last)
    assert ckpt["global_step"] == 5
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())
    monkeypatch.undo()  # a smaller batch would fit: the run resumes from last.ckpt
    train(compose_train([*args, "ckpt_path=last"], tmp_path))
    assert load(last)["global_step"] > 5


# ---------------------------------------------------------------------- atomic checkpoint writes
# A checkpoint writer in a fresh interpreter (a process forked from pytest can deadlock on a lock that
# another of its threads held at the fork). Once its imports are done it says "ready" and waits for a line
# on stdin; then it saves complete checkpoints of versions 1 and 2 in turn, for ever, and says "saved"
# once the first of them is in place.
CHECKPOINT_WRITER = """
import sys
import torch
from seq2seq.training.checkpoint_io import AtomicCheckpointIO
io = AtomicCheckpointIO()
payloads = [{"version": v, "weights": torch.full((int(sys.argv[2]),), float(v))} for v in (1, 2)]
print("ready", flush=True)
sys.stdin.readline()
for i in range(10**9):
    io.save_checkpoint(payloads[i % 2], sys.argv[1])
    if i == 0:
        print("saved", flush=True)
"""


def test_sigkill_during_checkpoint_writes_keeps_the_previous_checkpoint(tmp_path):
    """A process SIGKILLed while it overwrites a checkpoint (a cluster's time limit, the out-of-memory
    killer) leaves under the checkpoint's name the last complete save, never a partial file. Three
    writers, killed at different moments of their saves, one after the other. Mutation that makes it
    fail: AtomicCheckpointIO.save_checkpoint writing straight to `path` (torch.save(checkpoint, path)):
    the killed write leaves a truncated file that does not load."""
    path = tmp_path / "last.ckpt"
    size = 2_000_000  # 8 MB a save: each write lasts long enough to be killed in the middle of

    def payload(version: int) -> dict:
        return {"version": version, "weights": torch.full((size,), float(version))}

    AtomicCheckpointIO().save_checkpoint(payload(0), path)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    errors = [open(tmp_path / f"writer{i}.err", "w+") for i in range(3)]
    # All three start at once: their imports (seconds each) overlap; each writes only when told.
    writers = [subprocess.Popen([sys.executable, "-c", CHECKPOINT_WRITER, str(path), str(size)], cwd=REPO, env=env,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True) for err in errors]

    def expect(writer, err, line: str, failure: str) -> None:
        """The writer's next line of output is `line` (within 2 minutes), else fail with its stderr."""
        ready, _, _ = select.select([writer.stdout], [], [], 120)
        if not (ready and writer.stdout.readline() == line + "\n"):
            err.seek(0)
            pytest.fail(f"{failure}\n{err.read()[-3000:]}")

    killed_mid_write = 0
    try:
        for round_, (writer, err) in enumerate(zip(writers, errors)):
            expect(writer, err, "ready", "the writer did not start")
            writer.stdin.write("go\n")
            writer.stdin.flush()
            expect(writer, err, "saved", "the writer never completed a save: the test proves nothing")
            # Some saves later, kill it while a write is in progress (its temporary file exists).
            time.sleep(0.02 + 0.05 * round_)
            temporaries = f".last.ckpt.{writer.pid}@*.tmp"
            deadline = time.monotonic() + 5
            while not list(tmp_path.glob(temporaries)) and time.monotonic() < deadline:
                time.sleep(0.0005)
            os.kill(writer.pid, signal.SIGKILL)
            assert writer.wait() == -signal.SIGKILL
            killed_mid_write += bool(list(tmp_path.glob(temporaries)))  # what a killed write leaves behind
            ckpt = torch.load(path, map_location="cpu", weights_only=True)  # the last complete save
            assert ckpt["version"] in (1, 2)  # the writer had completed a save before it was killed
            assert torch.equal(ckpt["weights"], payload(ckpt["version"])["weights"])
            for leftover in tmp_path.glob(temporaries):
                leftover.unlink()
    finally:
        for writer, err in zip(writers, errors):
            writer.kill()
            writer.wait()
            writer.stdin.close()
            writer.stdout.close()
            err.close()
    assert killed_mid_write, "no kill hit a write in progress: the test proved nothing"


# ---------------------------------------------------------------------- temporaries of killed runs
def test_a_new_run_removes_the_temporaries_of_dead_processes_only(tmp_path, data_dir):
    """A killed save or cache build leaves a hidden temporary named after its process; the next run
    removes those whose process is gone, in the checkpoint folder and the data cache, and leaves alone
    one a live process owns and one without an owner in its name. Mutations that make it fail:
    temporaries._alive answering True (nothing removed) or False (the live owner's file removed)."""
    make = ("import sys, tempfile; from seq2seq.temporaries import owned_prefix; "
            "tempfile.mkstemp(dir=sys.argv[1], prefix=owned_prefix('last.ckpt'), suffix='.tmp'); "
            "tempfile.mkdtemp(dir=sys.argv[2], prefix=owned_prefix('multi30k.de-en.0123456789ab')); "
            "print(flush=True); sys.stdin.read()")  # then lives until its stdin closes
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    checkpoints, cache = tmp_path / "run" / "checkpoints", data_dir / "cache"
    checkpoints.mkdir(parents=True)
    cache.mkdir(parents=True, exist_ok=True)
    owners = [subprocess.Popen([sys.executable, "-c", make, checkpoints, cache], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, env=env, text=True) for _ in range(2)]
    dead, live = owners
    try:
        for owner in owners:
            owner.stdout.readline()  # its temporaries exist
        dead.stdin.close()
        dead.wait(timeout=60)
        unowned = checkpoints / ".last.ckpt.k2j4x8.tmp"  # as written before names carried their owner
        unowned.touch()

        def hidden() -> set[str]:
            return {p.name for folder in (checkpoints, cache) for p in folder.iterdir() if p.name.startswith(".")}

        before = hidden()
        assert len([n for n in before if f".{dead.pid}@" in n]) == 2 and len(before) == 5, before
        train(compose_train(overrides(data_dir, "trainer.max_steps=1", "trainer.max_epochs=1",
                                      "trainer.val_check_interval=1"), tmp_path / "run"))
        assert hidden() == {n for n in before if f".{dead.pid}@" not in n}
    finally:
        for owner in owners:
            if owner.poll() is None:
                owner.stdin.close()
                owner.wait(timeout=60)
