"""seq2seq-tune-search: the grid on the validation split, the winner stored as the checkpoint's search
defaults, and seq2seq-translate using them afterwards."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from seq2seq.cli import translate

from seq2seq.cli import tune_search
from seq2seq.evaluation import search_tuning
from seq2seq.checkpoint.format import MODEL_PREFIX, PAYLOAD_KEY, make_payload
from seq2seq.checkpoint.loading import load_for_translation
from seq2seq.config import ConfigError, DataConfig, ModelConfig, SearchConfig, section
from seq2seq.data.tokenizer import EOS_ID
from seq2seq.decoding.translator import Translator

from .conftest import synthetic_pairs, write_lines
from .helpers import tiny_model_and_tokenizer

TINY_MODEL = ModelConfig(embedding_size=16, encoder_hidden_size=16, decoder_hidden_size=32, encoder_layers=1,
                         attention_size=16, dropout=0.0, rnn_dropout=0.0)
BEAMS, PENALTIES = [1, 2, 4], [0.0, 1.0, 3.0]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """An untrained tiny checkpoint whose data config names a corpus folder (no val split yet), its
    model and tokenizer, and 30 validation sources."""
    tmp = tmp_path_factory.mktemp("tune")
    model, tokenizer, _ = tiny_model_and_tokenizer(TINY_MODEL, 300, 7, 300)
    with torch.no_grad():  # an untrained model that says EOS now and then: the length penalty matters
        model.decoder.output.proj.bias[EOS_ID] += 1.0
    model.eval()
    data = DataConfig(corpus="toy", root=str(tmp / "corpus"), download=False)
    config = {"model": dataclasses.asdict(TINY_MODEL), "data": dataclasses.asdict(data),
              "validation": {"metric": "chrf", "max_sentences": 0},  # the run's metric picks
              "search": dataclasses.asdict(SearchConfig(max_len_a=6, max_len_b=1.0, batch_tokens=512,
                                                        tune_beam_sizes=BEAMS, tune_length_penalties=PENALTIES))}
    ckpt = {"state_dict": {MODEL_PREFIX + k: v for k, v in model.state_dict().items()},
            "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.5}]}], "global_step": 17,
            PAYLOAD_KEY: make_payload(config, tokenizer)}
    path = tmp / "tiny.ckpt"
    torch.save(ckpt, path)
    sources = synthetic_pairs(30, 5)[0]
    return path, model, tokenizer, section(SearchConfig, config["search"], "search"), sources


def outputs(setup, beam: int, lp: float) -> list[str]:
    _, model, tokenizer, search_cfg, sources = setup
    cfg = dataclasses.replace(search_cfg, beam_size=beam, length_penalty=lp)
    return [t.text for t in Translator(model, tokenizer, cfg).translate(sources)]


def test_tuner_stores_the_best_point_and_translate_uses_it(setup, tmp_path, capsys):
    """The references are the outputs of one grid point (beam 4, lp 3.0), whose translations no other
    point gives: that point scores chrF 100 (the run's validation metric; BLEU is 0 on these one-word
    lines), must win, be written into the checkpoint, and be what
    seq2seq-translate then uses without options. Mutations: `best_row` taking the minimum picks another
    point; `store_search_defaults` not updating the config leaves translate on greedy search."""
    path, _, _, _, sources = setup
    ckpt = tmp_path / "best.ckpt"
    ckpt.write_bytes(path.read_bytes())
    target = outputs(setup, 4, 3.0)
    others = {(b, lp): outputs(setup, b, lp) for b in BEAMS for lp in (PENALTIES if b > 1 else [1.0])}
    assert all(o != target for key, o in others.items() if key != (4, 3.0))  # the winner is unique
    root = Path(section(DataConfig, torch.load(ckpt, weights_only=True)[PAYLOAD_KEY]["config"]["data"], "data").root)
    write_lines(root / "val.de", sources)
    write_lines(root / "val.en", target)

    before = torch.load(ckpt, weights_only=True)
    tune_search.main(["--checkpoint", str(ckpt), "--device", "cpu"])
    out = capsys.readouterr().out
    assert "changed: beam_size 1 -> 4, length_penalty 1.0 -> 3.0" in out, out
    assert len([line for line in out.splitlines() if line.strip().startswith(("1 ", "2 ", "4 "))]) == 7
    after = torch.load(ckpt, weights_only=True)
    tuning = after[PAYLOAD_KEY]["search_tuning"]
    assert (tuning["split"], tuning["metric"], tuning["sentences"]) == ("val", "chrf", 30)
    assert tuning["chosen"] == {"beam_size": 4, "length_penalty": 3.0, "min_len": 0}
    assert tuning["score"] == pytest.approx(100.0)
    assert tuning["previous"] == {"beam_size": 1, "length_penalty": 1.0, "min_len": 0}
    # Everything but the search defaults is as it was: weights, optimiser, counters (resumable).
    assert after["global_step"] == before["global_step"] and after["optimizer_states"] == before["optimizer_states"]
    assert all(torch.equal(after["state_dict"][k], v) for k, v in before["state_dict"].items())
    _, _, search_cfg, _ = load_for_translation(ckpt)
    assert (search_cfg.beam_size, search_cfg.length_penalty) == (4, 3.0)

    src, hyp = write_lines(tmp_path / "in.de", sources), tmp_path / "out.en"
    assert translate.main(["--quiet", "--checkpoint", str(ckpt), "--input", str(src), "--output", str(hyp)]) == 0
    assert hyp.read_text(encoding="utf-8").splitlines() == target
    # An explicit option still wins over the tuned default.
    assert translate.main(["--quiet", "--checkpoint", str(ckpt), "--input", str(src), "--output", str(hyp),
                           "--beam-size", "1"]) == 0
    assert hyp.read_text(encoding="utf-8").splitlines() == outputs(setup, 1, 1.0)


def test_dry_run_writes_nothing(setup, tmp_path, capsys):
    path, _, _, _, sources = setup
    ckpt = tmp_path / "best.ckpt"
    ckpt.write_bytes(path.read_bytes())
    data = DataConfig(corpus="toy", root=str(tmp_path / "elsewhere"), download=False)
    write_lines(Path(data.root) / "val.de", sources)
    write_lines(Path(data.root) / "val.en", outputs(setup, 2, 0.0))
    tune_search.main(["--checkpoint", str(ckpt), "--device", "cpu", "--dry-run", "--data-root", data.root,
                      "--beam-sizes", "2", "--length-penalties", "0,1", "--min-len", "1"])
    out = capsys.readouterr().out
    assert "dry run" in out and "beam_size 1 -> 2" in out and "min_len 0 -> 1" in out, out
    assert ckpt.read_bytes() == path.read_bytes()


def test_ensemble_tuning_picks_the_ensembles_point_and_writes_nothing(setup, tmp_path, capsys):
    """`--ensemble a b` runs the grid on the two members' ensemble: the references are the ensemble's
    outputs at one point (beam 4, lp 3.0), which neither member alone gives at any point, so only the
    ensemble scores chrF 100 there. The winner comes back as seq2seq-translate's flags and in --json;
    no checkpoint changes, and translating with those flags gives the references. Mutation:
    tune_ensemble tuning the first member alone (its best point scores below 100)."""
    import copy
    import json

    from seq2seq.decoding.search import Ensemble

    path, model, tokenizer, search_cfg, sources = setup
    a, b = tmp_path / "a.ckpt", tmp_path / "b.ckpt"
    a.write_bytes(path.read_bytes())
    other = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for param in other.parameters():
            param.add_(0.3 * torch.randn(param.shape, generator=generator))
    ckpt = torch.load(a, weights_only=True)
    ckpt["state_dict"] = {MODEL_PREFIX + k: v for k, v in other.state_dict().items()}
    torch.save(ckpt, b)

    def translations(m, beam, lp):
        cfg = dataclasses.replace(search_cfg, beam_size=beam, length_penalty=lp)
        return [t.text for t in Translator(m, tokenizer, cfg).translate(sources)]

    ensemble = Ensemble([model, other])
    target = translations(ensemble, 4, 3.0)
    grid = [(bs, lp) for bs in BEAMS for lp in (PENALTIES if bs > 1 else [1.0])]
    assert all(translations(ensemble, bs, lp) != target for bs, lp in grid if (bs, lp) != (4, 3.0))
    assert all(translations(m, bs, lp) != target for m in (model, other) for bs, lp in grid)
    root = Path(section(DataConfig, ckpt[PAYLOAD_KEY]["config"]["data"], "data").root)
    write_lines(root / "val.de", sources)
    write_lines(root / "val.en", target)
    before = a.read_bytes(), b.read_bytes()

    record_file = tmp_path / "tuned.json"
    tune_search.main(["--ensemble", str(a), str(b), "--device", "cpu", "--json", str(record_file)])
    out = capsys.readouterr().out
    flags = "--beam-size 4 --length-penalty 3.0 --min-len 0"
    assert f"translate with: seq2seq-translate --ensemble {a} {b} {flags}" in out, out
    record = json.loads(record_file.read_text())
    assert record["chosen"] == {"beam_size": 4, "length_penalty": 3.0, "min_len": 0}
    assert record["score"] == pytest.approx(100.0) and record["metric"] == "chrf"
    assert record["checkpoints"] == [str(a), str(b)] and record["translate_flags"] == flags
    assert (a.read_bytes(), b.read_bytes()) == before
    src, hyp = write_lines(tmp_path / "in.de", sources), tmp_path / "out.en"
    assert translate.main(["--quiet", "--ensemble", str(a), str(b), "--input", str(src), "--output", str(hyp),
                           *flags.split()]) == 0
    assert hyp.read_text(encoding="utf-8").splitlines() == target


def test_ensemble_tuning_refuses_a_dry_run(setup, capsys):
    with pytest.raises(SystemExit) as e:
        tune_search.main(["--ensemble", str(setup[0]), str(setup[0]), "--dry-run"])
    assert e.value.code == 2
    assert "--dry-run goes with --checkpoint" in capsys.readouterr().err


def test_best_row_follows_the_metric_direction():
    rows = [{"bleu": 30.0, "chrf": 50.0, "ter": 60.0}, {"bleu": 31.0, "chrf": 49.0, "ter": 55.0},
            {"bleu": 31.0, "chrf": 48.0, "ter": 58.0}]
    assert search_tuning.best_row(rows, "bleu") is rows[1]  # a tie goes to the point listed first
    assert search_tuning.best_row(rows, "chrf") is rows[0]
    assert search_tuning.best_row(rows, "ter") is rows[1]  # lower is better
    assert search_tuning.selection_metric("ppl") == "bleu"


@pytest.mark.parametrize("args,message", [
    (["--beam-sizes", "0,5"], "error: --beam-sizes must hold integers >= 1; 0 is not"),
    (["--beam-sizes", "5,five"], "error: --beam-sizes must be a comma-separated list of integers, got '5,five'"),
    (["--length-penalties", "1.0,-0.5"], "error: --length-penalties must hold numbers >= 0; -0.5 is not"),
    (["--length-penalties", "1,1.0"], "error: --length-penalties lists a value twice: [1.0, 1.0]"),
    (["--min-len", "-1"], "error: --min-len must be >= 0 (0 = no minimum), got -1"),
])
def test_bad_grid_values_are_clear_errors(setup, tmp_path, capsys, args, message):
    path = setup[0]
    with pytest.raises(SystemExit) as e:
        tune_search.main(["--checkpoint", str(path), "--device", "cpu", "--data-root", str(tmp_path), *args])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip() == message


def test_missing_validation_split_names_the_folders(setup, tmp_path, capsys):
    with pytest.raises(SystemExit):
        tune_search.main(["--checkpoint", str(setup[0]), "--data-root", str(tmp_path / "none")])
    err = capsys.readouterr().err
    assert "'val' split" in err and str(tmp_path / "none") in err


@pytest.mark.parametrize("key,value,message", [
    ("tune_beam_sizes", [], "config key 'search.tune_beam_sizes' must be a non-empty list of integers >= 1"),
    ("tune_length_penalties", [0.6, -1.0], "config key 'search.tune_length_penalties' must hold numbers >= 0"),
    ("min_len", -2, "config key 'search.min_len' must be >= 0"),
])
def test_bad_search_config_names_the_key(key, value, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        section(SearchConfig, {key: value}, "search")


def test_training_tunes_best_ckpt_before_the_test(tmp_path, learnable_corpus, capsys):
    """`test_tune_search=true`: after training, the grid runs on the validation split, best.ckpt gets the
    winner, and the test that follows translates with it; the tuned best.ckpt still resumes training.
    The runs call `train(cfg)`, what seq2seq-train runs, in this process.
    Mutation: removing the call in train.py leaves best.ckpt untuned (no `search_tuning`)."""
    from seq2seq.training.run import train

    from .helpers import TINY, compose_train, learn

    run_dir = tmp_path / "run"
    common = [*TINY, *learn(learnable_corpus, steps=100), f"paths.data_dir={tmp_path / 'data'}",
              "test_moses_bleu=false", "plot_curves=false"]
    train(compose_train([*common, "test_tune_search=true", "search.tune_beam_sizes=[1,3]",
                         "search.tune_length_penalties=[0.5,2.0]"], run_dir))
    stdout = capsys.readouterr().out
    best = run_dir / "checkpoints" / "best.ckpt"
    payload = torch.load(best, weights_only=True)[PAYLOAD_KEY]
    tuning = payload["search_tuning"]
    assert (tuning["split"], tuning["metric"], tuning["sentences"]) == ("val", "bleu", 40)
    assert [(r["beam_size"], r["length_penalty"]) for r in tuning["grid"]] == [(1, None), (3, 0.5), (3, 2.0)]
    assert {k: payload["config"]["search"][k] for k in tuning["chosen"]} == tuning["chosen"]
    assert stdout.index("tuning the search of") < stdout.index("test (test_2016_flickr")

    model, tokenizer, search_cfg, _ = load_for_translation(best)
    sources = (learnable_corpus / "test_2016_flickr.de").read_text(encoding="utf-8").splitlines()
    written = (run_dir / "checkpoints" / "test_2016_flickr.de-en.hyp").read_text(encoding="utf-8").splitlines()
    assert [t.text for t in Translator(model, tokenizer, search_cfg).translate(sources)] == written

    train(compose_train([*common, f"ckpt_path={best}", "trainer.max_steps=110", "test_after_training=false"], run_dir))
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 110
