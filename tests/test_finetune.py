"""`init_from=<checkpoint>`: a new run from a checkpoint's weights only, on another corpus, with the
checkpoint's sentencepiece models; configs that describe another model or vocabulary are refused."""

from __future__ import annotations

import pytest
import torch

from seq2seq.checkpoint.format import CheckpointError
from seq2seq.config import ConfigError
from seq2seq.training.run import train

from .conftest import synthetic_pairs, write_lines
from .helpers import TINY, compose_train


def write_corpus(root, seed: int):
    for split, n, offset in (("train", 150, 0), ("val", 20, 1), ("test_2016_flickr", 12, 2)):
        src, tgt = synthetic_pairs(n, seed + offset)
        write_lines(root / f"{split}.de", src)
        write_lines(root / f"{split}.en", tgt)
    return root


def overrides(corpus, data_dir) -> list[str]:
    return [*TINY, f"data.root={corpus}", "data.corpus=toy", "data.mirrors=[]", "data.download=false",
            "data.tokenizer.vocab_size=60", "data.tokenizer.byte_fallback=false", "data.max_train_pairs=0",
            "data.max_valid_pairs=0", "batching.max_tokens=300", f"paths.data_dir={data_dir}",
            "trainer.max_epochs=1000", "test_after_training=false"]


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    """A 6-step run on one corpus: (its last.ckpt, a second corpus with other sentences, a tmp folder)."""
    tmp = tmp_path_factory.mktemp("finetune")
    run_dir = tmp / "parent"
    train(compose_train([*overrides(write_corpus(tmp / "corpus_a", 1), tmp / "data"), "trainer.max_steps=6"], run_dir))
    return run_dir / "checkpoints" / "last.ckpt", write_corpus(tmp / "corpus_b", 11), tmp


def test_weights_only_on_another_corpus_with_the_checkpoints_vocabulary_then_resume(parent):
    """The new run starts from the parent's weights (a learning rate of 1e-9 leaves them as loaded) with
    a fresh optimiser (Adam's step count), schedule and step counters, and encodes the new corpus with
    the parent's sentencepiece models (a model trained on corpus B would differ). Resuming it
    (`ckpt_path=last`, same init_from) continues its own steps.
    Mutations that make it fail: `apply_weights` not called (fresh weights); passing init_from to
    `trainer.fit` as ckpt_path (optimiser and counters restored: step 6 + 2); `TranslationDataModule`
    ignoring the given tokenizer (a new sentencepiece model, other vocabulary)."""
    ckpt, corpus_b, tmp = parent
    run_dir = tmp / "child"
    # Another seed: a fresh initialisation would be far from the parent's weights.
    args = [*overrides(corpus_b, tmp / "data"), "seed=7", f"init_from={ckpt}", "optim.lr=1e-9", "scheduler=constant",
            "scheduler.warmup_steps=0"]
    train(compose_train([*args, "trainer.max_steps=2"], run_dir))
    before, after = load(ckpt), load(run_dir / "checkpoints" / "last.ckpt")
    assert after["global_step"] == 2 and after["epoch"] == 0
    assert [s["step"].item() for s in after["optimizer_states"][0]["state"].values()][:1] == [2.0]
    assert after["lr_schedulers"][0]["last_epoch"] == 2
    for name, weight in before["state_dict"].items():
        assert torch.allclose(after["state_dict"][name], weight, atol=1e-6), name
    assert after["seq2seq"]["tokenizer"] == before["seq2seq"]["tokenizer"]
    train(compose_train([*args, "trainer.max_steps=3", "ckpt_path=last"], run_dir))
    assert load(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 3


def test_a_differing_model_or_vocabulary_is_refused_naming_every_key(parent, tmp_path):
    """Refused before any data is prepared (no cache folder). Dropout may differ: not part of the weights;
    so may subword sampling: not part of the vocabulary. Mutations that make it fail:
    `finetune.load_initial_weights` skipping the tokenizer comparison, or comparing the sampling keys."""
    ckpt, corpus_b, _ = parent
    cfg = compose_train([*overrides(corpus_b, tmp_path / "data"), f"init_from={ckpt}", "model.cell=gru",
                         "model.encoder_layers=2", "model.dropout=0.1", "data.tgt_lang=fr",
                         "data.tokenizer.vocab_size=80", "data.tokenizer.sampling_alpha=0.1"], tmp_path / "run")
    with pytest.raises(ConfigError) as e:
        train(cfg)
    message = str(e.value)
    assert message.startswith(f"config key 'init_from': {ckpt} cannot start this run: ")
    for part in ("model.cell is 'gru' here but 'lstm' in the checkpoint",
                 "model.encoder_layers is 2 here but 1 in the checkpoint",
                 "data.tgt_lang is 'fr' here but 'en' in the checkpoint",
                 "data.tokenizer.vocab_size is 80 here but 60 in the checkpoint"):
        assert part in message
    assert "dropout" not in message and "sampling" not in message and "\n" not in message
    assert not (tmp_path / "data").exists()


def test_init_from_a_missing_or_foreign_file(parent, tmp_path):
    _, corpus_b, _ = parent
    foreign = tmp_path / "weights.pt"
    torch.save({"state_dict": {}}, foreign)
    for path, message in ((tmp_path / "nope.ckpt", "does not exist"), (foreign, "not written by seq2seq-train")):
        cfg = compose_train([*overrides(corpus_b, tmp_path / "data"), f"init_from={path}"], tmp_path / "run")
        with pytest.raises(CheckpointError, match=message):
            train(cfg)
