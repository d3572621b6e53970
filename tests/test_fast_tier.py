"""Light tests of the modules whose own tests are all in the slow tier (they need a trained model, a
server process or a training run): each exercises its module briefly on an untrained tiny checkpoint or
a few lines of text, so that `pytest -m "not slow"` still runs code of every module of seq2seq/
(docs/development.md). The thorough tests are in the topic files named in each docstring."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from seq2seq.checkpoint.format import MODEL_PREFIX, make_payload, read_checkpoint
from seq2seq.checkpoint.init_from import checkpoint_tokenizer, load_initial_weights
from seq2seq.checkpoint.loading import load_for_translation
from seq2seq.cli import average, export
from seq2seq.config import (BatchingConfig, ConfigError, DataConfig, LanguageModelConfig, ModelConfig,
                            MonolingualDataConfig, OptimConfig, SchedulerConfig, SearchConfig, TokenizerConfig,
                            ValidationConfig, section)
from seq2seq.decoding.translator import Translator
from seq2seq.deploy.quantize import quantize_torch_int8
from seq2seq.lm.datamodule import LMDataModule
from seq2seq.lm.module import LanguageModelModule
from seq2seq.lm.training import check_sections
from seq2seq.training.average_last import ValidatedCheckpoints, best_checkpoint_callback
from seq2seq.training.csv_logger import CSVLogger

from .conftest import synthetic_pairs, write_lines
from .helpers import compose_train, read_metrics, tiny_model_and_tokenizer

MODEL = ModelConfig(cell="gru", embedding_size=16, encoder_hidden_size=16, decoder_hidden_size=32, encoder_layers=1,
                    attention_size=16, dropout=0.0, rnn_dropout=0.0)
VOCABULARY = TokenizerConfig(vocab_size=300, byte_fallback=True)  # tiny_model_and_tokenizer's settings
LINES = synthetic_pairs(4, seed=5)[0]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """An untrained tiny de->en checkpoint (no Lightning): its outputs are junk of the maximum length."""
    model, tokenizer, _ = tiny_model_and_tokenizer(MODEL, 200, 7, VOCABULARY.vocab_size)
    config = {"model": dataclasses.asdict(MODEL),
              "data": {"src_lang": "de", "tgt_lang": "en", "tokenizer": dataclasses.asdict(VOCABULARY)},
              "search": dataclasses.asdict(SearchConfig(max_len_a=1, max_len_b=2.0, batch_tokens=200))}
    path = tmp_path_factory.mktemp("fast_tier") / "tiny.ckpt"
    torch.save({"state_dict": {MODEL_PREFIX + k: v for k, v in model.state_dict().items()},
                "seq2seq": make_payload(config, tokenizer)}, path)
    return path


def test_average_of_one_checkpoint_twice_is_that_checkpoint(ckpt, tmp_path):
    """seq2seq-average (cli/average, checkpoint/averaging); thorough: tests/test_translate.py."""
    out = tmp_path / "avg.ckpt"
    assert average.main([str(ckpt), str(ckpt), "--output", str(out)]) == 0
    mine, theirs = read_checkpoint(out)["state_dict"], read_checkpoint(ckpt)["state_dict"]
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert average.main([str(tmp_path / "missing.ckpt"), "--output", str(out)]) == 2


def test_export_and_the_onnx_runtime_translate_like_torch(ckpt, tmp_path):
    """seq2seq-export (cli/export, deploy/export) and torch int8 (deploy/quantize); thorough:
    tests/test_runtime.py, tests/test_export.py."""
    pytest.importorskip("onnx", reason='the onnx extra is not installed: pip install -e ".[onnx]"')
    pytest.importorskip("onnxruntime", reason='the onnx extra is not installed: pip install -e ".[onnx]"')
    from seq2seq.deploy.runtime import OnnxTranslator  # here: onnxruntime is an optional extra

    assert export.main(["--checkpoint", str(ckpt), "--output-dir", str(tmp_path / "onnx")]) == 0
    model, tokenizer, search, _ = load_for_translation(ckpt)
    theirs = [t.text for t in Translator(model, tokenizer, search).translate(LINES)]
    assert [t.text for t in OnnxTranslator(tmp_path / "onnx", threads=1).translate(LINES)] == theirs
    int8 = Translator(quantize_torch_int8(model), tokenizer, search).translate(LINES)
    assert len(int8) == len(LINES)


def test_the_api_translates_and_names_a_bad_field(ckpt):
    """serving/app, serving/schema, cli/serve; thorough: tests/test_serve.py."""
    pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'seq2seq[serve]'")
    # here: fastapi (under these modules) is an optional extra
    from fastapi.testclient import TestClient

    from seq2seq.cli import serve as serve_cli
    from seq2seq.serving.app import Engine, create_app

    with TestClient(create_app(Engine.load(str(ckpt), "cpu"), max_wait_ms=0)) as client:
        r = client.post("/translate", json={"text": LINES, "beam_size": 2, "nbest": 2})
        assert r.status_code == 200, r.text
        assert [len(t["nbest"]) for t in r.json()["translations"]] == [2] * len(LINES)
        r = client.post("/translate", json={"text": "a", "beam_size": 0})
        assert r.status_code == 422 and "beam_size" in r.text
    assert serve_cli.main(["--checkpoint", str(ckpt.parent / "missing.ckpt")]) == 2


def test_init_from_takes_the_weights_and_refuses_another_shape(ckpt):
    """checkpoint/init_from; thorough: tests/test_finetune.py."""
    data = DataConfig(src_lang="de", tgt_lang="en", tokenizer=VOCABULARY)
    tokenizer, weights = load_initial_weights(ckpt, data, dataclasses.replace(MODEL, dropout=0.3))
    assert tokenizer.src_vocab_size == checkpoint_tokenizer(ckpt, data).src_vocab_size
    stored = read_checkpoint(ckpt)["state_dict"]
    assert {MODEL_PREFIX + k for k in weights} == stored.keys()
    with pytest.raises(ConfigError, match="model.cell is 'lstm' here but 'gru'"):
        load_initial_weights(ckpt, data, dataclasses.replace(MODEL, cell="lstm"))


def test_training_parts_without_a_training_run(tmp_path):
    """training/average_last (which callback writes best.ckpt) and training/csv_logger (a resumed run's
    metrics.csv kept, rows past the resumed step dropped); thorough: tests/test_training_features.py,
    tests/test_resume.py."""
    best = ModelCheckpoint(dirpath=tmp_path, monitor="val/bleu", mode="max")
    kept = ValidatedCheckpoints(tmp_path, keep=2)
    assert best_checkpoint_callback([kept, ModelCheckpoint(dirpath=tmp_path), best]) is best
    assert kept.paths() == []

    for resumed_at, steps in ((None, range(6)), (2, range(3, 5))):  # a run, then resumed from its step 2
        logger = CSVLogger(tmp_path, name="logs", version="")
        if resumed_at is not None:
            logger.experiment.keep_until(resumed_at)
        for step in steps:
            logger.log_metrics({"train/loss": 1.0 / (step + 1)}, step=step)
        logger.save()
    assert [int(r["step"]) for r in read_metrics(tmp_path)] == [0, 1, 2, 3, 4]


def test_language_model_parts_on_a_few_lines(tmp_path):
    """lm/datamodule, lm/module, lm/training without a training run; thorough: tests/test_lm.py."""
    for split, seed in (("train", 1), ("valid", 2)):
        write_lines(tmp_path / f"{split}.txt", synthetic_pairs(60, seed)[1])
    cfg = compose_train(["experiment=lm_quickstart", f"data.train_files=[{tmp_path}/train.txt]",
                         f"data.valid_files=[{tmp_path}/valid.txt]", f"data.cache_dir={tmp_path}/cache",
                         "data.tokenizer.vocab_size=60", "data.tokenizer.byte_fallback=false",
                         "model.hidden_size=16", "model.embedding_size=8"], tmp_path / "run")
    check_sections(cfg)
    with pytest.raises(ConfigError, match="data=monolingual"):
        check_sections(compose_train(["model=rnn_lm"], tmp_path / "run2"))

    datamodule = LMDataModule(section(MonolingualDataConfig, cfg.data, "data"),
                              section(BatchingConfig, cfg.batching, "batching"), seed=1)
    datamodule.setup("fit")
    module = LanguageModelModule(section(LanguageModelConfig, cfg.model, "model"),
                                 section(OptimConfig, cfg.optim, "optim"),
                                 section(SchedulerConfig, cfg.scheduler, "scheduler"),
                                 section(SearchConfig, cfg.search, "search"),
                                 section(ValidationConfig, cfg.validation, "validation"),
                                 tokenizer=datamodule.tokenizer, run_config={})
    batch = next(iter(datamodule.train_dataloader()))
    _, nll, tokens = module._losses(batch)
    assert torch.isfinite(nll) and tokens == batch.mask.sum()
