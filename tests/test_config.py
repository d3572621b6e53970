"""Every config composes; typos, wrong types and unknown choices are errors that name the key."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from seq2seq.config import (CONF_DIR, LM_TYPE, BatchingConfig, ConfigError, DataConfig, LanguageModelConfig,
                            ModelConfig, MonolingualDataConfig, OptimConfig, SchedulerConfig, SearchConfig,
                            ValidationConfig, section)

GROUPS = {name: sorted(p.stem for p in (CONF_DIR / name).glob("*.yaml"))
          for name in ("experiment", "trainer", "model", "optim", "scheduler", "search", "logger", "callbacks", "debug", "data")}
SECTIONS = {"data": DataConfig, "batching": BatchingConfig, "model": ModelConfig, "optim": OptimConfig,
            "scheduler": SchedulerConfig, "search": SearchConfig, "validation": ValidationConfig}


def compose_train(overrides=()):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        return compose("train", overrides=list(overrides), return_hydra_config=True)


def check_sections(cfg):
    for key, cls in SECTIONS.items():
        if key == "model" and cfg.model.get("type") == LM_TYPE:  # language models have their own sections
            cls = LanguageModelConfig
        if key == "data" and cfg.data.get("type") == "monolingual":
            cls = MonolingualDataConfig
        section(cls, cfg[key], key)


@pytest.mark.parametrize("group,option", [(g, o) for g, opts in GROUPS.items() for o in opts])
def test_every_option_composes_and_validates(group, option):
    cfg = compose_train([f"{group}={option}"])
    check_sections(cfg)
    OmegaConf.to_container(cfg.trainer, resolve=False)


@pytest.mark.parametrize("experiment", GROUPS["experiment"])
def test_presets_name_a_whole_run(experiment):
    cfg = compose_train([f"experiment={experiment}"])
    assert cfg.task_name == experiment
    check_sections(cfg)


def test_required_presets_exist():
    assert {"quickstart", "multi30k_gpu"} <= set(GROUPS["experiment"])
    assert {"cpu", "gpu", "ddp", "ddp_cpu"} <= set(GROUPS["trainer"])


def test_mistyped_override_is_an_error():
    with pytest.raises(ConfigCompositionException, match="cel"):
        compose_train(["model.cel=gru"])


def test_mistyped_key_inside_a_file_is_an_error():
    with pytest.raises(ConfigError, match=r"'model\.hiden_size'.*valid keys"):
        section(ModelConfig, {"hiden_size": 3}, "model")


def test_wrong_type_is_an_error():
    cfg = compose_train(["model.encoder_layers=two"])
    with pytest.raises(ConfigError, match=r"'model\.encoder_layers' must be an integer"):
        section(ModelConfig, cfg.model, "model")


@pytest.mark.parametrize("key,value,options", [("cell", "transformer", "rnn_tanh, rnn_relu, gru, lstm"),
                                                ("attention", "multihead", "bahdanau, luong_dot")])
def test_unknown_choice_lists_the_valid_options(key, value, options):
    cfg = compose_train([f"model.{key}={value}"])
    with pytest.raises(ConfigError, match=rf"'model\.{key}' is '{value}'; valid options: {options}"):
        section(ModelConfig, cfg.model, "model")


def test_input_feed_needs_attention():
    with pytest.raises(ConfigError, match="input_feed"):
        section(ModelConfig, {"attention": "none", "input_feed": True}, "model")


@pytest.mark.parametrize("metric,mode", [("bleu", "max"), ("chrf", "max"), ("ter", "min"), ("ppl", "min")])
def test_checkpoint_and_early_stopping_follow_the_metric(metric, mode):
    cfg = compose_train([f"validation.metric={metric}"])
    for name in ("model_checkpoint", "early_stopping"):
        assert cfg.callbacks[name].monitor == f"val/{metric}"
        assert cfg.callbacks[name].mode == mode


def test_conf_dir_is_the_checkout_conf():
    assert (CONF_DIR / "train.yaml").is_file()
    assert CONF_DIR == Path(__file__).resolve().parents[1] / "conf"
