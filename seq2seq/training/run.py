"""Training a translation model: `train(cfg)` over a composed config (tests call it directly), from the
prepared corpus to the tested best checkpoint.

`seq2seq-train` (`seq2seq.cli.train`) calls it for translation models and `seq2seq.lm.training` for
language models; both build their Trainer with `seq2seq.training.trainer`. Resume a run with
`hydra.run.dir=<its folder> ckpt_path=last`.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from omegaconf import DictConfig

from seq2seq.checkpoint.format import CheckpointError
from seq2seq.checkpoint.init_from import apply_weights, checkpoint_tokenizer, load_initial_weights
from seq2seq.checkpoint.loading import load_for_translation
from seq2seq.config import (BatchingConfig, ConfigError, DataConfig, ModelConfig, OptimConfig, SchedulerConfig,
                            SearchConfig, ValidationConfig, section)
from seq2seq.data.batching import TokenBucketBatchSampler, sequence_lengths, split_parts
from seq2seq.data.corpus import CorpusError, find_corpus_files, read_parallel
from seq2seq.data.datamodule import TranslationDataModule
from seq2seq.data.tokenizer import Tokenizer, TokenizerError
from seq2seq.decoding.translator import Translator
from seq2seq.evaluation.metrics import MOSES_EXTRA, moses_languages
from seq2seq.evaluation.search_tuning import tune_after_training
from seq2seq.evaluation.tables import table_lines, translate_and_score, write_json
from seq2seq.model.precision import precision_dtype
from seq2seq.training.average_last import average_last_validated, best_checkpoint_path, best_validation
from seq2seq.training.callbacks import LastCheckpoint
from seq2seq.training.module import TranslationModule
from seq2seq.training.trackers import check_trackers, finish_trackers, start_trackers
from seq2seq.training.trainer import (build_trainer, check_hardware, quiet_third_party, resolve_ckpt_path,
                                      resume_in_place, run_config, step_limit, write_run_curves)

log = logging.getLogger(__name__)


def user_errors() -> tuple[type[Exception], ...]:
    """The exceptions that are the user's mistakes, not bugs: `seq2seq-train` reports them as one
    `error: ...` line with exit status 2."""
    return (ConfigError, CorpusError, TokenizerError, CheckpointError)


def dataset_tokenizer(data: DataConfig) -> Tokenizer | None:
    """The sentencepiece models of the checkpoint `data.tokenizer_from` names (checked against `data`'s
    vocabulary settings), or None when it names none (the corpus cache trains its own). Raises
    CheckpointError (no usable checkpoint) or ConfigError (its vocabulary settings differ)."""
    if not data.tokenizer_from:
        return None
    return checkpoint_tokenizer(Path(data.tokenizer_from).expanduser(), data)


def moses_language(cfg: DictConfig, tgt_lang: str) -> str | None:
    """The language of the end-of-run Moses-tokenized BLEU: `data.tgt_lang` when `test_moses_bleu` is on and
    sacremoses is installed, else None (a missing sacremoses is said in one log line). Checked before
    training, so that a target language without Moses rules is an error then, not after the run."""
    if not (cfg.test_moses_bleu and cfg.test_after_training):
        return None
    try:
        languages = moses_languages()
    except RuntimeError:
        log.info("test_moses_bleu: sacremoses is not installed, so the test scores leave out the lowercased "
                 "Moses-tokenized BLEU the Multi30k papers report (%s; test_moses_bleu=false silences this)",
                 MOSES_EXTRA)
        return None
    if tgt_lang not in languages:
        raise ConfigError(f"config key 'test_moses_bleu' is true, but 'data.tgt_lang' {tgt_lang!r} has no Moses "
                          f"tokenization rules (valid: {', '.join(languages)}); set test_moses_bleu=false")
    return tgt_lang


def evaluate(ckpt: str | Path, sets: dict[str, tuple[list[str], list[str]]], out_dir: Path, pair: str,
             device: torch.device | str, dtype: torch.dtype | None = None,
             moses_lang: str | None = None) -> list[dict[str, Any]]:
    """Translate each set's sources with checkpoint `ckpt` and score them against its references.

    `sets`: split name -> (sources, references). Writes, per split, `{split}.{pair}.hyp` and
    `{split}.{pair}.scores.json` into `out_dir`, and all rows in `test_scores.json`; returns the rows
    (see `seq2seq.evaluation.tables.make_row`). With `moses_lang`, the scores also hold "moses":
    lowercased BLEU on text Moses-tokenized for that language.
    """
    model, tokenizer, search_cfg, _ = load_for_translation(ckpt, device)
    translator = Translator(model, tokenizer, search_cfg, device=device, dtype=dtype)
    rows = translate_and_score(translator, sets, out_dir, pair, moses_lang)
    write_json(out_dir / "test_scores.json", rows, checkpoint=str(ckpt), pair=pair)
    return rows


def read_test_sets(data: DataConfig) -> dict[str, tuple[list[str], list[str]]]:
    """The raw text of every split named in `data.test_splits` (not `data.test_split`, which the
    prepared corpus holds), read before training so that a missing or broken file stops the run at
    once. Raises CorpusError naming the split and the folders searched."""
    names = [n for n in dict.fromkeys(data.test_splits) if n != data.test_split]
    return {name: read_parallel(*find_corpus_files(data, name)) for name in names}


def train_batches_per_epoch(datamodule: Any, world_size: int) -> int:
    """Training batches one process runs per epoch (what Lightning compares val_check_interval with).
    From the split's length arrays (a memory-mapped split's `lengths`: no pass over its sentences)."""
    split = datamodule.corpus.splits["train"]
    src_lengths = sequence_lengths(split.src) + 1  # + EOS, as ParallelDataset counts them
    tgt_lengths = sequence_lengths(split.tgt) + 1  # + BOS or EOS
    b = datamodule.batching
    return len(TokenBucketBatchSampler(src_lengths, tgt_lengths, b.max_tokens, b.max_sentences, b.bucket_width,
                                       shuffle=True, seed=datamodule.seed, num_replicas=world_size, rank=0,
                                       parts=split_parts(split)))


def check_schedule(trainer: pl.Trainer, batches: int) -> int:
    """Refuse, before training, the Trainer settings that Lightning would reject only once the data
    loaders are built (a traceback, and after DDP has started its processes). Returns the optimizer
    steps of the whole run (`stepping_batches`)."""
    accumulate = trainer.accumulate_grad_batches
    if not isinstance(accumulate, int) or accumulate < 1:
        raise ConfigError(f"config key 'trainer.accumulate_grad_batches' must be an integer >= 1, got {accumulate!r}")
    limit = trainer.limit_train_batches
    per_epoch = min(batches, limit) if isinstance(limit, int) else int(batches * limit)
    if per_epoch < 1:
        raise ConfigError(f"config key 'trainer.limit_train_batches' is {limit!r}: that leaves no training batch of "
                          f"the {batches} per epoch (per process); use an integer >= 1 or a larger fraction")
    interval = trainer.val_check_interval
    if (isinstance(interval, int) and trainer.check_val_every_n_epoch is not None and interval > per_epoch
            and trainer.limit_val_batches != 0):
        raise ConfigError(f"config key 'trainer.val_check_interval' is {interval}, more than the {per_epoch} training "
                          "batches of an epoch (per process): validation would never run; set "
                          "trainer.check_val_every_n_epoch=null to count batches across epochs, or a smaller "
                          "interval (a float is a fraction of an epoch)")
    return stepping_batches(trainer, per_epoch)


def stepping_batches(trainer: pl.Trainer, per_epoch: int) -> int | float:
    """The optimizer steps of the run, as Lightning's `trainer.estimated_stepping_batches` counts them
    (max_steps, or epochs x steps per epoch, whichever ends first), from the batches per epoch computed
    here. Asking Lightning instead (in configure_optimizers) builds the training loader before a resumed
    run has restored its position in the epoch, which then starts over (Lightning-AI/pytorch-lightning#20550)."""
    if trainer.max_epochs == -1:
        return float("inf") if trainer.max_steps == -1 else trainer.max_steps
    steps = math.ceil(per_epoch / trainer.accumulate_grad_batches) * max(trainer.max_epochs, 1)
    return min(steps, trainer.max_steps) if trainer.max_steps != -1 else steps


def train(cfg: DictConfig) -> dict[str, float]:
    """Train the translation model of `cfg`; returns the final callback metrics (plus test scores when
    tested). A language model's config (`model.type: rnn_lm`) goes to `seq2seq.lm.training` instead:
    `seq2seq.cli.train.train` dispatches on `model.type`."""
    if cfg.data.get("type") == "monolingual":
        raise ConfigError("data=monolingual is text for a language model, but the model group is a translation "
                          "model; use model=rnn_lm (experiment=lm_quickstart sets both)")
    quiet_third_party()
    data = section(DataConfig, cfg.data, "data")
    batching = section(BatchingConfig, cfg.batching, "batching")
    model_cfg = section(ModelConfig, cfg.model, "model")
    optim = section(OptimConfig, cfg.optim, "optim")
    scheduler = section(SchedulerConfig, cfg.scheduler, "scheduler")
    search_cfg = section(SearchConfig, cfg.search, "search")
    validation = section(ValidationConfig, cfg.validation, "validation")
    check_hardware(cfg)
    check_trackers(cfg)
    bad_steps, oom_steps = step_limit(cfg, "max_bad_steps"), step_limit(cfg, "max_oom_steps")
    moses_lang = moses_language(cfg, data.tgt_lang)
    run_dir = Path(cfg.paths.output_dir)
    plot_curves = cfg.plot_curves
    ckpt_path = resolve_ckpt_path(cfg, run_dir)
    init_from, tokenizer, weights = cfg.get("init_from"), None, None
    if init_from and data.tokenizer_from:
        raise ConfigError(f"config keys 'init_from' ({init_from}) and 'data.tokenizer_from' ({data.tokenizer_from}) "
                          "are both set: init_from already reuses its checkpoint's sentencepiece models; drop one")
    if init_from:
        tokenizer, weights = load_initial_weights(init_from, data, model_cfg)
    # Before the corpus is prepared: a missing test split stops the run now, not after training.
    test_sets = read_test_sets(data) if cfg.test_after_training else {}

    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS
    pl.seed_everything(cfg.seed, workers=True)

    # The corpus is encoded with a checkpoint's sentencepiece models (init_from's, or data.tokenizer_from's)
    # or with models trained on it.
    given = tokenizer if init_from else dataset_tokenizer(data)
    datamodule = TranslationDataModule(data, batching, seed=cfg.seed, tokenizer=given)
    datamodule.setup("fit")  # builds the cache on a miss: the model needs the vocabulary sizes
    if init_from:
        report = datamodule.corpus.report["train"]
        unk, pieces = report["src_unk"] + report["tgt_unk"], report["src_pieces"] + report["tgt_pieces"]
        if unk:
            log.warning("init_from: the checkpoint's sentencepiece models leave %d of the %d training pieces of this "
                        "corpus as <unk> (characters they never saw): those words cannot be learned", unk, pieces)
    module = TranslationModule(model_cfg, optim, scheduler, search_cfg, validation,
                               tokenizer=datamodule.tokenizer, run_config=run_config(cfg),
                               max_bad_steps=bad_steps, max_oom_steps=oom_steps)
    if weights is not None and ckpt_path is None:  # a resumed fine-tuning run restores its own weights
        apply_weights(module.model, weights, init_from)
        log.info("weights from %s (init_from): new optimiser, learning-rate schedule and step counters", init_from)
    n_params = sum(p.numel() for p in module.parameters())
    log.info("model: %s cell, %s attention, %.2fM parameters", model_cfg.cell, model_cfg.attention, n_params / 1e6)

    trainer = build_trainer(cfg, run_dir)
    module.stepping_batches = check_schedule(trainer, train_batches_per_epoch(datamodule, trainer.world_size))
    if ckpt_path is not None:
        resume_in_place(trainer, ckpt_path)
    start_trackers(trainer, cfg, run_dir)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    metrics.update(average_last_validated(trainer, module, datamodule))
    metrics.update(best_validation(trainer))  # after averaging: best.ckpt may now be the average

    if cfg.test_tune_search and trainer.is_global_zero:  # before the test, which then uses the tuned search
        tune_after_training(best_checkpoint_path(trainer), trainer, datamodule, search_cfg)
    test_tables = []
    if cfg.test_after_training and trainer.is_global_zero:
        test = datamodule.corpus.splits["test"]
        test_sets = {data.test_split: (test.src_text, test.tgt_text), **test_sets}
        test_metrics, table = score_test_sets(trainer, test_sets, data, moses_lang)
        metrics.update(test_metrics)
        test_tables = [table] if table else []
    if plot_curves and trainer.is_global_zero:
        write_run_curves(trainer, run_dir)
    finish_trackers(trainer, run_dir, metrics, test_tables)
    return metrics


def score_test_sets(trainer: pl.Trainer, sets: dict[str, tuple[list[str], list[str]]], data: DataConfig,
                    moses_lang: str | None = None) -> tuple[dict[str, float], Path | None]:
    """Score the best checkpoint (by validation.metric) on every test set, print the table, write
    checkpoints/test_scores.json; -> the first set's cased scores as `test/*` metrics, and that file.
    Without a best checkpoint (no validation ran) the last one is scored, and without any checkpoint
    nothing is ({}, None)."""
    best = best_checkpoint_path(trainer)
    ckpt = best if best and Path(best).is_file() else ""
    if not ckpt:
        lasts = [Path(cb.dirpath) / f"{cb.filename}{cb.FILE_EXTENSION}" for cb in trainer.checkpoint_callbacks
                 if isinstance(cb, LastCheckpoint)]
        ckpt = next((str(p) for p in lasts if p.is_file()), "")
        if not ckpt:
            log.warning("no checkpoint was written (no checkpoint callback: callbacks=none?): skipping the test")
            return {}, None
        log.warning("no best checkpoint (no validation ran): testing the last one, %s", ckpt)
    device = trainer.strategy.root_device
    pair, out_dir = f"{data.src_lang}-{data.tgt_lang}", Path(ckpt).parent
    # The trainer's precision, not the module's: after ddp_spawn the module in this process is detached.
    rows = evaluate(ckpt, sets, out_dir, pair, device, precision_dtype(trainer.precision, device.type), moses_lang)
    print(f"test ({', '.join(sets)}, {data.src_lang}->{data.tgt_lang}) with {ckpt}:")
    for line in table_lines(rows):
        print(line)
    print(f"scores: {out_dir / 'test_scores.json'}; hypotheses: {out_dir}/<split>.{pair}.hyp")
    metrics = {f"test/{k}": rows[0][k] for k in ("bleu", "chrf", "ter")}
    if "bleu_moses" in rows[0]:
        metrics["test/bleu_moses"] = rows[0]["bleu_moses"]
    return metrics, out_dir / "test_scores.json"
