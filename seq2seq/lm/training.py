"""Training a language model (`model.type: rnn_lm`): the same Hydra tree, Trainer, callbacks, checkpoints
and resume as translation (`seq2seq.training.trainer`), over monolingual text; at the end the best
checkpoint's test perplexity (when there is test text). `seq2seq-train` (`seq2seq.cli.train.train`) calls
`train_language_model` for such a config."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import lightning.pytorch as pl
from omegaconf import DictConfig

from seq2seq.checkpoint.loading import load_language_model
from seq2seq.config import (BatchingConfig, ConfigError, LanguageModelConfig, MonolingualDataConfig, OptimConfig,
                            SchedulerConfig, SearchConfig, ValidationConfig, section)
from seq2seq.lm.datamodule import LMDataModule
from seq2seq.lm.module import LM_METRICS, LanguageModelModule
from seq2seq.lm.perplexity import score_text
from seq2seq.training.average_last import average_last_validated, best_checkpoint_path, best_validation
from seq2seq.training.trackers import check_trackers, finish_trackers, start_trackers
from seq2seq.training.trainer import (build_trainer, check_hardware, quiet_third_party, resolve_ckpt_path,
                                      resume_in_place, run_config, step_limit, write_run_curves)

log = logging.getLogger(__name__)


def check_sections(cfg: DictConfig) -> None:
    if cfg.data.get("type") != "monolingual":
        raise ConfigError("config key 'model.type' is rnn_lm (a language model), which trains on monolingual "
                          "text, but the data group is a parallel corpus; use data=monolingual "
                          "(experiment=lm_quickstart sets it)")
    if cfg.get("init_from"):
        raise ConfigError("config key 'init_from' fine-tunes a translation model; a language model starts "
                          "from its own checkpoint with ckpt_path (resume) only")


def test_perplexity(best: str, lines: list[str], out: Path, device) -> dict[str, float]:
    lm, tokenizer, _ = load_language_model(best, device)
    score = score_text(lm, tokenizer, lines, device)
    result = {"ppl": score.ppl, "word_ppl": score.word_ppl, "tokens": sum(score.tokens),
              "words": sum(score.words), "lines": len(lines)}
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


def train_language_model(cfg: DictConfig) -> dict[str, float]:
    """Train the language model of `cfg`; returns the final callback metrics (plus test perplexity)."""
    quiet_third_party()
    check_sections(cfg)
    data = section(MonolingualDataConfig, cfg.data, "data")
    batching = section(BatchingConfig, cfg.batching, "batching")
    model_cfg = section(LanguageModelConfig, cfg.model, "model")
    optim = section(OptimConfig, cfg.optim, "optim")
    scheduler = section(SchedulerConfig, cfg.scheduler, "scheduler")
    search_cfg = section(SearchConfig, cfg.search, "search")  # unused by an LM; kept for a uniform checkpoint
    validation = section(ValidationConfig, cfg.validation, "validation")
    if validation.metric not in LM_METRICS:
        raise ConfigError(f"config key 'validation.metric' is {validation.metric!r}, but a language model's "
                          f"validation logs perplexity, not translation scores; valid options: {', '.join(LM_METRICS)}")
    check_hardware(cfg)
    check_trackers(cfg)
    bad_steps, oom_steps = step_limit(cfg, "max_bad_steps"), step_limit(cfg, "max_oom_steps")
    run_dir = Path(cfg.paths.output_dir)
    ckpt_path = resolve_ckpt_path(cfg, run_dir)
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    pl.seed_everything(cfg.seed, workers=True)

    datamodule = LMDataModule(data, batching, seed=cfg.seed)
    datamodule.setup("fit")
    module = LanguageModelModule(model_cfg, optim, scheduler, search_cfg, validation,
                                 tokenizer=datamodule.tokenizer, run_config=run_config(cfg), max_bad_steps=bad_steps,
                                 max_oom_steps=oom_steps)
    n_params = sum(p.numel() for p in module.parameters())
    log.info("language model: %s cell, %d layers, %.2fM parameters, vocabulary %d", model_cfg.cell,
             model_cfg.layers, n_params / 1e6, datamodule.tokenizer.tgt_vocab_size)

    trainer = build_trainer(cfg, run_dir)
    if ckpt_path is not None:
        resume_in_place(trainer, ckpt_path)
    start_trackers(trainer, cfg, run_dir)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    metrics.update(average_last_validated(trainer, module, datamodule))
    metrics.update(best_validation(trainer))  # after averaging: best.ckpt may now be the average

    best, test_files = best_checkpoint_path(trainer), []
    test = datamodule.corpus.splits.get("test")
    if cfg.test_after_training and trainer.is_global_zero and test is not None:
        if not best:
            log.warning("no best checkpoint was written (no validation ran?): skipping the test")
        else:
            stem = "test" if data.train_files else data.test_split  # files of one's own, or the Multi30k split
            out = Path(best).parent / f"{stem}.{data.lang}.perplexity.json"
            result = test_perplexity(best, test.text, out, trainer.strategy.root_device)
            print(f"test perplexity with {best}: {result['ppl']:.2f} per piece ({result['tokens']} pieces), "
                  f"{result['word_ppl']:.2f} per word ({result['words']} words, end of sentence counted)")
            metrics.update({"test/ppl": result["ppl"], "test/word_ppl": result["word_ppl"]})
            test_files = [out]
    if cfg.plot_curves and trainer.is_global_zero:
        write_run_curves(trainer, run_dir)
    finish_trackers(trainer, run_dir, metrics, test_files)
    return metrics
