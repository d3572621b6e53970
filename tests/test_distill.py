"""Knowledge distillation (`seq2seq-distill`) and `data.tokenizer_from`: teachers translate their
training sources, a student trains on those translations with the teachers' sentencepiece models and
can then join their ensemble."""

from __future__ import annotations

import dataclasses
import gzip
import json
import shlex

import pytest

from seq2seq.checkpoint.format import CheckpointError, read_checkpoint
from seq2seq.checkpoint.loading import load_members
from seq2seq.cli import distill
from seq2seq.config import ConfigError
from seq2seq.decoding.search import Ensemble
from seq2seq.training.run import train
from seq2seq.decoding.translator import Translator

from .conftest import synthetic_pairs, write_lines
from .helpers import TINY, compose_train, run_script


def data_overrides(data_dir) -> list[str]:
    """Everything but where the corpus is: the teachers' and the student's vocabulary settings agree."""
    return [*TINY, "data.tokenizer.vocab_size=60", "data.tokenizer.byte_fallback=false", "data.max_train_pairs=40",
            "data.max_valid_pairs=0", "batching.max_tokens=300", f"paths.data_dir={data_dir}",
            "trainer.max_epochs=1000", "test_after_training=false", "search.max_len_a=3", "search.max_len_b=1.5"]


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """Two 8-step de->en runs (seeds 1 and 2) on one corpus of 150 training pairs (40 used)."""
    tmp = tmp_path_factory.mktemp("distill")
    corpus = tmp / "corpus"
    for split, n, seed in (("train", 150, 1), ("val", 20, 2), ("test_2016_flickr", 12, 3)):
        src, tgt = synthetic_pairs(n, seed)
        write_lines(corpus / f"{split}.de", src)
        write_lines(corpus / f"{split}.en", tgt)
    where = [f"data.root={corpus}", "data.corpus=toy", "data.mirrors=[]", "data.download=false"]
    runs = []
    for seed in (1, 2):
        train(compose_train([*data_overrides(tmp / "data"), *where, f"seed={seed}", "trainer.max_steps=8"],
                            tmp / f"teacher{seed}"))
        runs.append(tmp / f"teacher{seed}")
    return runs, corpus, tmp


def read_gz(path) -> list[str]:
    return gzip.decompress(path.read_bytes()).decode("utf-8").splitlines()


def test_the_student_learns_the_ensembles_translations_with_the_teachers_vocabulary(teachers, tmp_path, capsys):
    """The distilled corpus pairs each used training source with the ensemble's translation (beam 2,
    as asked) and keeps validation and test byte for byte; the printed overrides train a student whose
    sentencepiece models are the teachers' (so it ensembles with them).
    Mutations that make it fail: translating with the first teacher only; dropping data.max_train_pairs;
    prepare_corpus ignoring data.tokenizer_from (the student trains its own vocabulary)."""
    runs, corpus, _ = teachers
    script = distill
    assert script.main([*map(str, runs), "--out", str(tmp_path / "kd"), "--beam-size", "2",
                        "--length-penalty", "1.0", "--device", "cpu"]) == 0
    overrides = shlex.split(capsys.readouterr().out)
    kd = tmp_path / "kd" / "corpus"

    sources = synthetic_pairs(150, 1)[0][:40]
    ckpts = [r / "checkpoints" / "best.ckpt" for r in runs]
    models, tokenizer, search, _ = load_members(ckpts)
    cfg = dataclasses.replace(search, beam_size=2, length_penalty=1.0)
    expected = [t.text for t in Translator(Ensemble(models), tokenizer, cfg).translate(sources)]
    alone = [t.text for t in Translator(models[0], tokenizer, cfg).translate(sources)]
    assert expected != alone  # the ensemble is what was distilled, not its first member
    assert read_gz(kd / "train.de.gz") == sources
    assert read_gz(kd / "train.en.gz") == expected
    for split in ("val", "test_2016_flickr"):
        for lang in ("de", "en"):
            assert (kd / f"{split}.{lang}").read_bytes() == (corpus / f"{split}.{lang}").read_bytes()
    about = json.loads((tmp_path / "kd" / "distill.json").read_text())
    assert (tmp_path / "kd" / "student_overrides.txt").read_text().split() == overrides
    assert about["sentences"] == 40 and about["search"]["beam_size"] == 2 and about["student_overrides"] == overrides
    assert f"data.tokenizer_from={ckpts[0].resolve()}" in overrides and f"data.root={kd.resolve()}" in overrides

    student = tmp_path / "student"
    # seq2seq-train <those overrides>, in this process
    train(compose_train([*data_overrides(tmp_path / "data"), *overrides, "trainer.max_steps=3"], student))
    student_ckpt = student / "checkpoints" / "best.ckpt"
    assert read_checkpoint(student_ckpt)["seq2seq"]["tokenizer"] == read_checkpoint(ckpts[0])["seq2seq"]["tokenizer"]
    members, *_ = load_members([*ckpts, student_ckpt])  # one vocabulary, one direction: they ensemble
    assert len(members) == 3


def test_own_vocabulary_trains_the_students_sentencepiece(teachers, tmp_path, capsys):
    """--own-vocabulary leaves data.tokenizer_from out: the student's models come from the distilled text."""
    runs, _, _ = teachers
    assert distill.main([str(runs[0]), "--out", str(tmp_path / "kd"), "--own-vocabulary"]) == 0
    overrides = shlex.split(capsys.readouterr().out)
    assert not any(o.startswith("data.tokenizer_from=") for o in overrides)
    assert "data.corpus=toy_distilled" in overrides


def test_bad_teachers_and_vocabularies_are_refused_by_name(teachers, tmp_path, capsys):
    """A missing teacher, a vocabulary that does not match data.tokenizer, a missing tokenizer_from file,
    and tokenizer_from beside init_from: each stops with a message naming the key or file at fault."""
    runs, corpus, tmp = teachers
    assert distill.main([str(tmp_path / "nothing"), "--out", str(tmp_path / "kd")]) == 2
    assert f"{tmp_path / 'nothing'}: no checkpoint" in capsys.readouterr().err

    ckpt = runs[0] / "checkpoints" / "best.ckpt"
    where = [f"data.root={corpus}", "data.corpus=toy", "data.mirrors=[]", "data.download=false"]
    cfg = compose_train([*data_overrides(tmp_path / "data"), *where, f"data.tokenizer_from={ckpt}",
                         "data.tokenizer.vocab_size=80"], tmp_path / "run")
    with pytest.raises(ConfigError, match=r"config key 'data.tokenizer_from': .* cannot lend its sentencepiece "
                                          r"models to this run: data.tokenizer.vocab_size is 80 here but 60"):
        train(cfg)
    cfg = compose_train([*data_overrides(tmp_path / "data"), *where,
                         f"data.tokenizer_from={tmp_path / 'missing.ckpt'}"], tmp_path / "run")
    with pytest.raises(CheckpointError, match=r"config key 'data.tokenizer_from': checkpoint .*missing.ckpt does not exist"):
        train(cfg)
    proc = run_script("prepare", *data_overrides(tmp_path / "data"), *where,
                      f"data.tokenizer_from={tmp_path / 'missing.ckpt'}", f"hydra.run.dir={tmp_path / 'prep'}",
                      check=False)
    assert proc.returncode == 2 and "error: config key 'data.tokenizer_from': checkpoint" in proc.stderr, proc.stderr
    cfg = compose_train([*data_overrides(tmp_path / "data"), *where, f"data.tokenizer_from={ckpt}",
                         f"init_from={ckpt}"], tmp_path / "run")
    with pytest.raises(ConfigError, match="'init_from' .* and 'data.tokenizer_from' .* are both set"):
        train(cfg)
