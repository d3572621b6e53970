"""`seq2seq-ensemble`: an ensemble of trained runs, its search tuned on validation, its test
translations and scores beside its members' (how the GPU check measures the seed ensembles)."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch

from seq2seq.cli import ensemble, translate
from seq2seq.checkpoint.format import MODEL_PREFIX, PAYLOAD_KEY, make_payload
from seq2seq.config import DataConfig, ModelConfig, SearchConfig
from seq2seq.evaluation.tables import score_set
from seq2seq.decoding.search import Ensemble
from seq2seq.data.tokenizer import EOS_ID
from seq2seq.decoding.translator import Translator

from .conftest import synthetic_pairs, write_lines
from .helpers import tiny_model_and_tokenizer

TINY_MODEL = ModelConfig(embedding_size=16, encoder_hidden_size=16, decoder_hidden_size=32, encoder_layers=1,
                         attention_size=16, dropout=0.0, rnn_dropout=0.0)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two run folders (checkpoints/best.ckpt, different weights, one vocabulary, de->en), a corpus
    folder with val and test_2016_flickr, and (model_a, model_b, tokenizer, search config, test sources)."""
    tmp = tmp_path_factory.mktemp("ens")
    model, tokenizer, _ = tiny_model_and_tokenizer(TINY_MODEL, 300, 7, 300)
    with torch.no_grad():  # an untrained model that says EOS now and then: the length penalty matters
        model.decoder.output.proj.bias[EOS_ID] += 1.0
    other = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for param in other.parameters():
            param.add_(0.3 * torch.randn(param.shape, generator=generator))
    model.eval(), other.eval()
    data = DataConfig(corpus="toy", root=str(tmp / "corpus"), download=False)
    search = SearchConfig(max_len_a=6, max_len_b=1.0, batch_tokens=512, tune_beam_sizes=[1, 2],
                          tune_length_penalties=[0.0, 3.0])
    config = {"model": dataclasses.asdict(TINY_MODEL), "data": dataclasses.asdict(data),
              "validation": {"metric": "chrf", "max_sentences": 0}, "search": dataclasses.asdict(search)}
    folders = []
    for name, m, bleu in (("a", model, 10.0), ("b", other, 20.0)):
        ckpt = tmp / name / "checkpoints" / "best.ckpt"
        ckpt.parent.mkdir(parents=True)
        torch.save({"state_dict": {MODEL_PREFIX + k: v for k, v in m.state_dict().items()}, "global_step": 1,
                    PAYLOAD_KEY: make_payload(config, tokenizer)}, ckpt)
        (ckpt.parent / "test_scores.json").write_text(json.dumps({"splits": [
            {"split": "test_2016_flickr", "bleu": bleu, "bleu_lc": bleu + 1, "chrf": 50.0}]}))
        folders.append(tmp / name)
    val_src, test_src = synthetic_pairs(20, 5)[0], synthetic_pairs(25, 6)[0]

    def translations(beam, lp, sources):
        cfg = dataclasses.replace(search, beam_size=beam, length_penalty=lp)
        return [t.text for t in Translator(Ensemble([model, other]), tokenizer, cfg).translate(sources)]

    write_lines(tmp / "corpus" / "val.de", val_src)
    write_lines(tmp / "corpus" / "val.en", translations(2, 3.0, val_src))  # the one point scoring chrF 100
    write_lines(tmp / "corpus" / "test_2016_flickr.de", test_src)
    write_lines(tmp / "corpus" / "test_2016_flickr.en", synthetic_pairs(25, 6)[1])
    assert translations(2, 0.0, val_src) != translations(2, 3.0, val_src)
    assert translations(2, 3.0, test_src) != translations(1, 1.0, test_src)
    return folders, tmp, test_src


def test_ensemble_is_tuned_on_validation_tested_and_shown_beside_its_members(runs, tmp_path, capsys):
    """The grid picks the ensemble's point that reproduces the validation references (beam 2, lp 3.0);
    the test hypotheses are what `seq2seq-translate --ensemble` gives with those flags, the row scores
    them, and the table puts the members' own scores and their mean beside it. Mutations: translating
    the test set with the first member alone, or with the untuned search (greedy), changes the hyps."""
    folders, _, test_src = runs
    out = tmp_path / "ens"
    assert ensemble.main([*map(str, folders), "--out", str(out), "--device", "cpu"]) == 0
    result = json.loads((out / "test_scores.json").read_text())
    assert result["search_tuning"]["chosen"] == {"beam_size": 2, "length_penalty": 3.0, "min_len": 0}
    assert result["search_tuning"]["score"] == pytest.approx(100.0)
    ckpts = [str(f / "checkpoints" / "best.ckpt") for f in folders]
    assert result["checkpoints"] == ckpts and result["pair"] == "de-en"

    src = write_lines(tmp_path / "in.de", test_src)
    expected = tmp_path / "expected.en"
    assert translate.main(["--quiet", "--ensemble", *ckpts, "--input", str(src), "--output", str(expected),
                           *result["search_tuning"]["translate_flags"].split()]) == 0
    hyps = (out / "test_2016_flickr.de-en.hyp").read_text(encoding="utf-8").splitlines()
    assert hyps == expected.read_text(encoding="utf-8").splitlines()
    row = result["splits"][0]
    refs = (runs[1] / "corpus" / "test_2016_flickr.en").read_text(encoding="utf-8").splitlines()
    assert row["split"] == "test_2016_flickr" and row["sentences"] == 25
    assert row["bleu"] == pytest.approx(score_set("t", hyps, [refs])["bleu"])

    table = capsys.readouterr().out
    assert table == (out / "ensemble.md").read_text()
    assert "| a | 10.00 | 11.00 |" in table and "| b | 20.00 | 21.00 |" in table
    assert "| mean of 2 member(s) | 15.00 | 16.00 |" in table
    assert f"| **ensemble** | **{row['bleu']:.2f}** | **{row['bleu_lc']:.2f}** |" in table


def test_a_run_without_a_checkpoint_is_named(runs, tmp_path, capsys):
    folders, _, _ = runs
    empty = tmp_path / "empty_run"
    empty.mkdir()
    assert ensemble.main([str(folders[0]), str(empty), "--out", str(tmp_path / "o"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert f"{empty}: no checkpoint at {empty / 'checkpoints' / 'best.ckpt'}" in err, err
    assert not (tmp_path / "o").exists()
