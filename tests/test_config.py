"""Every config composes; typos, wrong types and unknown choices are errors that name the key."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from seq2seq.config import (CONF_DIR, LM_TYPE, BatchingConfig, ConfigError, DataConfig, LanguageModelConfig,
                            ModelConfig, MonolingualDataConfig, OptimConfig, SchedulerConfig, SearchConfig,
                            ValidationConfig, hydra_errors, section)

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
    with pytest.raises(ConfigError, match=r"'model\.encoder_layers' must be an integer"):
        with hydra_errors():  # the schema rejects it while Hydra composes
            cfg = compose_train(["model.encoder_layers=two"])
        section(ModelConfig, cfg.model, "model")


@pytest.mark.parametrize("key,value,options", [("cell", "transformer", "rnn_tanh, rnn_relu, gru, lstm"),
                                                ("attention", "multihead", "bahdanau, luong_dot")])
def test_unknown_choice_lists_the_valid_options(key, value, options):
    with pytest.raises(ConfigError, match=rf"'model\.{key}' is '{value}'; valid options: {options}"):
        with hydra_errors():
            cfg = compose_train([f"model.{key}={value}"])
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


def _compose_with_experiment(tmp_path, text, overrides=()):
    """Compose train.yaml with one extra experiment file (a user's own config folder)."""
    (tmp_path / "experiment").mkdir(exist_ok=True)
    (tmp_path / "experiment" / "mine.yaml").write_text("# @package _global_\n" + text)
    return compose_train(["hydra.searchpath=[file://" + str(tmp_path) + "]", "experiment=mine", *overrides])


def test_the_schema_checks_yaml_files_while_hydra_composes(tmp_path):
    """A typo, a wrong type or an invalid choice inside a YAML file fails in compose(), before any
    code reads the config. Mutation: dropping `train_schema` from train.yaml's defaults list composes all three."""
    for text, message in [("model:\n  hiden_size: 64\n", r"unknown config key 'model\.hiden_size'; valid keys under "
                                                          r"'model': attention, attention_size"),
                          ("batching:\n  max_tokens: lots\n", r"'batching\.max_tokens' must be an integer, got 'lots'"),
                          ("validation:\n  metric: accuracy\n", r"'validation\.metric' is 'accuracy'; valid options: "
                                                                r"bleu, chrf, ter, ppl, loss"),
                          ("seeed: 3\n", r"unknown config key 'seeed'; valid keys at the top level: average_last, batching,")]:
        with pytest.raises(ConfigError, match=message):
            with hydra_errors():
                _compose_with_experiment(tmp_path, text)


def test_a_key_no_yaml_file_sets_is_an_error(tmp_path):
    """The schema Hydra sees has no values: a key the YAML files leave out is reported, not filled in
    silently from the dataclass. Mutation: registering `OmegaConf.structured(TrainConfig)` unmasked passes it."""
    (tmp_path / "model").mkdir()
    rnn = (CONF_DIR / "model" / "rnn.yaml").read_text()
    kept = [line for line in rnn.splitlines() if not line.startswith("bridge:")]
    (tmp_path / "model" / "partial.yaml").write_text("\n".join(kept))
    cfg = compose_train(["hydra.searchpath=[file://" + str(tmp_path) + "]", "model=partial"])
    assert section(ModelConfig, compose_train()["model"], "model").bridge is True
    with pytest.raises(ConfigError, match=r"config key 'model\.bridge' has no value"):
        section(ModelConfig, cfg.model, "model")


def test_sections_hold_plain_strings_and_a_checkpoint_dict_builds_the_same(tmp_path):
    """A composed section and the plain dict a checkpoint stores give equal dataclasses, with choices as
    plain strings (torch.load(weights_only=True) refuses enum objects)."""
    cfg = compose_train(["model.cell=gru"])
    from_hydra = section(ModelConfig, cfg.model, "model")
    stored = OmegaConf.to_container(cfg.model, resolve=True, enum_to_str=True)
    assert section(ModelConfig, stored, "model") == from_hydra
    assert type(from_hydra.cell) is str and from_hydra.cell == "gru"
    assert section(ModelConfig, {"cell": "gru"}, "model").attention == "luong_general"  # older checkpoints


def test_the_app_prints_one_line_naming_the_key(capsys, tmp_path):
    """seq2seq-train's entry turns Hydra's composition errors into `error: ...` and exit status 2.
    Mutation: calling `hydra_main()` without `run_hydra_app` prints Hydra's multi-line text and exits 1."""
    import sys

    from seq2seq.cli import train

    argv = sys.argv
    sys.argv = ["seq2seq-train", "model.cell=transformer", f"hydra.run.dir={tmp_path}"]
    try:
        with pytest.raises(SystemExit) as exit_info:
            train.main()
    finally:
        sys.argv = argv
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.strip() == ("error: config key 'model.cell' is 'transformer'; valid options: "
                           "rnn_tanh, rnn_relu, gru, lstm")
