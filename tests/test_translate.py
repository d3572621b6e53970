"""seq2seq-translate and seq2seq-average on a real tiny checkpoint (trained once for the module).

Most runs call `seq2seq.cli.translate.main([...])` in-process (seconds instead of a Python start-up
each); one runs the console script for real. The tiny model is barely trained, so its output is
junk that mostly runs to the maximum length: fine for the line contract and the file handling; the
tests that need finished translations use a model trained on the learnable toy pair instead.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from seq2seq.cli import average, translate
from seq2seq.checkpoint.format import PAYLOAD_KEY
from seq2seq.checkpoint.loading import load_for_translation
from seq2seq.config import TokenizerConfig
from seq2seq.data.tokenizer import EOS_ID, Tokenizer, train_sentencepiece
from seq2seq.training.run import train
from seq2seq.decoding.translator import Translator

from .conftest import synthetic_pairs
from .helpers import REPO, TINY, compose_train

FAST = ["--max-len-a", "2", "--max-len-b", "0.5", "--quiet"]  # short outputs: the model is untrained
BIAS_KEY = "model.decoder.output.proj.bias"  # output layer bias in the Lightning state dict
LONG = " ".join(["Hund"] * 300)  # > search.max_src_tokens=250 pieces: truncated with a warning
# Empty, whitespace-only, very long and CRLF lines, and no final newline.
AWKWARD = ("Ein Mann schläft auf einer Bank.\n\n   \t \n" + LONG + "\nZwei Hunde spielen im Schnee.\r\n"
           "Eine Frau liest").encode("utf-8")
AWKWARD_LINES = 6
EMPTY = {1, 2}  # 0-based indices of the empty / whitespace-only lines



@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, multi30k_dir) -> Path:
    """One tiny training run (in-process) that also keeps one checkpoint per epoch."""
    tmp = tmp_path_factory.mktemp("translate")
    cfg = compose_train([*TINY, "test_after_training=false", f"paths.data_dir={tmp / 'data'}",
                         "callbacks=[default,periodic_checkpoint]", "data.max_valid_pairs=10"], tmp / "run")
    train(cfg)
    return tmp / "run"


@pytest.fixture(scope="module")
def learned_ckpt(learned_run) -> Path:
    """A tiny model trained on the learnable toy pair until it translates (seconds): its greedy
    translations end with EOS by themselves. The run tests/test_train.py checks (conftest's
    `learned_run`): read only."""
    return learned_run[0] / "checkpoints" / "best.ckpt"


@pytest.fixture(scope="module")
def ckpt(run_dir) -> Path:
    return run_dir / "checkpoints" / "epoch000.ckpt"  # written by callbacks=periodic_checkpoint


@pytest.fixture(scope="module")
def sources(multi30k_dir) -> list[str]:
    return gzip.open(multi30k_dir / "test_2016_flickr.de.gz", "rt", encoding="utf-8").read().splitlines()[:8]


@pytest.fixture(scope="module")
def other_ckpt(ckpt, tmp_path_factory) -> Path:
    """A second, different model with the same vocabulary: the weights plus fixed noise."""
    g = torch.Generator().manual_seed(0)
    return derive(ckpt, tmp_path_factory.mktemp("other") / "other.ckpt", lambda c: c["state_dict"].update(
        {k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in c["state_dict"].items()
         if v.is_floating_point()}))


def derive(src: Path, dst: Path, edit) -> Path:
    """Copy a checkpoint, applying `edit(ckpt_dict)` on the way."""
    ckpt = torch.load(src, map_location="cpu", weights_only=True)
    edit(ckpt)
    torch.save(ckpt, dst)
    return dst


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def run(*args) -> int:
    return translate.main([str(a) for a in args])


def out_lines(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    assert text == "" or text.endswith("\n")
    return text.split("\n")[:-1] if text else []


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in out_lines(path)]


# ----------------------------------------------------------------------------------- line contract
def test_periodic_checkpoints_exist_and_load(run_dir, ckpt):
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    model, tokenizer, search_cfg, config = load_for_translation(ckpt)
    assert tokenizer.tgt_vocab_size == config["data"]["tokenizer"]["vocab_size"]
    assert torch.load(ckpt, weights_only=True)["global_step"] > 0


@pytest.mark.parametrize("ensemble, flags, per_line", [
    (False, [], 1),
    (False, ["--alignment"], 1),
    (False, ["--format", "jsonl"], 1),
    (False, ["--format", "jsonl", "--nbest", "2", "--alignment"], 1),
    (False, ["--nbest", "3"], 3),
    (False, ["--sample", "--seed", "3", "--top-k", "5", "--temperature", "0.7"], 1),
    (True, ["--beam-size", "2"], 1),
])
def test_one_output_line_per_input_line(ckpt, tmp_path, caplog, ensemble, flags, per_line):
    src = tmp_path / "in.de"
    src.write_bytes(AWKWARD)
    out = tmp_path / "out.txt"
    model = ["--ensemble", ckpt, ckpt] if ensemble else ["--checkpoint", ckpt]
    assert run(*model, "--input", src, "--output", out, *FAST, *flags) == 0
    lines = out_lines(out)
    assert len(lines) == AWKWARD_LINES * per_line
    assert "line 4" in caplog.text and "truncated" in caplog.text  # the long line, named
    if "--format" in flags:
        objs = [json.loads(line) for line in lines]
        assert [o["line"] for o in objs] == list(range(1, AWKWARD_LINES + 1))
        for i in EMPTY:
            assert objs[i]["translation"] == "" and objs[i]["score"] == 0.0
    elif per_line == 1:
        for i in EMPTY:
            assert lines[i] == ("\t" if "--alignment" in flags else "")
        if "--sample" not in flags:  # (a sample may end at once)
            assert all(lines[i].strip() for i in range(AWKWARD_LINES) if i not in EMPTY)


def test_score_reference_gives_one_line_per_input_line(ckpt, tmp_path):
    src = tmp_path / "in.de"
    src.write_bytes(AWKWARD)
    refs = write(tmp_path / "ref.en", ["A man sleeps.", "", "x", "Dogs.", "", "A woman reads."])
    for fmt in ("text", "jsonl"):
        out = tmp_path / f"scores.{fmt}"
        assert run("--checkpoint", ckpt, "--input", src, "--output", out, "--score-reference", refs,
                   "--format", fmt, "--quiet") == 0
        lines = out_lines(out)
        assert len(lines) == AWKWARD_LINES
        scores = ([float(x) for x in lines] if fmt == "text"
                  else [o["score"] for o in map(json.loads, lines)])
        assert all(s < 0 and math.isfinite(s) for s in scores)  # empty lines are scored too
        if fmt == "text":
            assert all(re.fullmatch(r"-?\d+\.\d{6}", x) for x in lines)
    short = write(tmp_path / "short.en", ["one line"])
    assert run("--checkpoint", ckpt, "--input", src, "--output", tmp_path / "x", "--score-reference",
               short, "--quiet") == 2
    assert not (tmp_path / "x").exists()
    with pytest.raises(SystemExit) as e:  # silently ignoring --nbest would be worse
        run("--checkpoint", ckpt, "--input", src, "--score-reference", refs, "--nbest", "2")
    assert e.value.code == 2


def test_model_spelling_newlines_still_gives_one_line_each(ckpt, tmp_path, sources):
    """Byte-fallback pieces can spell '\\n' or '\\r': a translation must never break a line."""
    tok = Tokenizer.from_state_dict(torch.load(ckpt, weights_only=True)[PAYLOAD_KEY]["tokenizer"])
    newline, cr = tok._tgt.piece_to_id("<0x0A>"), tok._tgt.piece_to_id("<0x0D>")
    assert tok.decode_tgt([[newline, cr]]) == ["\n\r"]

    def edit(c):
        c["state_dict"][BIAS_KEY][newline] += 50.0
        c["state_dict"][BIAS_KEY][cr] += 49.9

    bad = derive(ckpt, tmp_path / "newlines.ckpt", edit)
    src = write(tmp_path / "in.de", sources)
    for fmt in ("text", "jsonl"):
        out = tmp_path / f"out.{fmt}"
        assert run("--checkpoint", bad, "--input", src, "--output", out, "--format", fmt, *FAST) == 0
        lines = out_lines(out)
        assert len(lines) == len(sources)
        assert not any("\r" in line or "\x0b" in line for line in lines)


def test_gzip_input_file_and_stdin(ckpt, tmp_path, sources, monkeypatch, capsys):
    plain = write(tmp_path / "in.de", sources)
    packed = tmp_path / "in.de.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    assert run("--checkpoint", ckpt, "--input", plain, "--output", tmp_path / "a.txt", *FAST) == 0
    assert run("--checkpoint", ckpt, "--input", packed, "--output", tmp_path / "b.txt", *FAST) == 0
    expected = out_lines(tmp_path / "a.txt")
    assert out_lines(tmp_path / "b.txt") == expected
    for data in (plain.read_bytes(), packed.read_bytes()):
        monkeypatch.setattr(sys, "stdin", _stdin(data))
        capsys.readouterr()
        assert run("--checkpoint", ckpt, *FAST) == 0  # stdin to stdout
        assert capsys.readouterr().out.split("\n")[:-1] == expected


def _stdin(data: bytes):
    import io

    return io.TextIOWrapper(io.BytesIO(data), encoding="utf-8")


def test_console_script_reads_gzip_stdin_and_reports_progress(ckpt, sources):
    data = gzip.compress(("\n".join(sources) + "\n\n").encode("utf-8"))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "seq2seq.cli.translate", "--checkpoint", str(ckpt),
                           "--max-len-a", "2", "--max-len-b", "0.5"], input=data, capture_output=True,
                          cwd=REPO, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()
    lines = proc.stdout.decode("utf-8").split("\n")
    assert lines[-1] == "" and len(lines) - 1 == len(sources) + 1 and lines[-2] == ""
    err = proc.stderr.decode()
    assert f"translated {len(sources) + 1}/{len(sources) + 1} lines" in err  # progress
    assert re.search(r"\d+ lines in [\d.]+ s: [\d.]+ sentences/s, \d+ target tokens/s", err)  # throughput


# --------------------------------------------------------------------------------- determinism
@pytest.mark.parametrize("search", [[], ["--beam-size", "3"]])
def test_one_at_a_time_equals_batched(ckpt, tmp_path, sources, search):
    """--batch-tokens 1 gives every sentence a batch of its own; the default packs mixed lengths."""
    src = write(tmp_path / "in.de", [*sources, "", "Hund", sources[0] + " " + sources[1]])
    texts = []
    for budget in ("1", "100000"):
        out = tmp_path / f"out{budget}.txt"
        assert run("--checkpoint", ckpt, "--input", src, "--output", out, "--batch-tokens", budget,
                   *FAST, *search) == 0
        texts.append(out.read_bytes())
    assert texts[0] == texts[1]


def test_one_at_a_time_equals_batched_nbest(ckpt, tmp_path, sources):
    src = write(tmp_path / "in.de", sources)
    runs = []
    for budget in ("1", "100000"):
        out = tmp_path / f"out{budget}.jsonl"
        assert run("--checkpoint", ckpt, "--input", src, "--output", out, "--batch-tokens", budget,
                   "--nbest", "3", "--format", "jsonl", *FAST) == 0
        runs.append(jsonl(out))
    for a, b in zip(*runs):
        assert [n["translation"] for n in a["nbest"]] == [n["translation"] for n in b["nbest"]]
        # Batch composition may change the last bit of a float32 matrix product.
        assert [n["score"] for n in a["nbest"]] == pytest.approx([n["score"] for n in b["nbest"]], rel=1e-5)


def test_fixed_seed_gives_identical_samples(ckpt, tmp_path, sources):
    src = write(tmp_path / "in.de", sources)
    outs = {}
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        outs[name] = tmp_path / f"{name}.jsonl"
        assert run("--checkpoint", ckpt, "--input", src, "--output", outs[name], "--sample", "--seed", seed,
                   "--format", "jsonl", *FAST) == 0
    assert outs["a"].read_bytes() == outs["b"].read_bytes()
    assert outs["a"].read_bytes() != outs["c"].read_bytes()
    # top-k 1 sampling is greedy search, whatever the seed and temperature.
    assert run("--checkpoint", ckpt, "--input", src, "--output", tmp_path / "g.txt", *FAST) == 0
    assert run("--checkpoint", ckpt, "--input", src, "--output", tmp_path / "k1.txt", "--sample", "--top-k", "1",
               "--temperature", "3", "--seed", "5", *FAST) == 0
    assert (tmp_path / "g.txt").read_bytes() == (tmp_path / "k1.txt").read_bytes()


# ------------------------------------------------------------------------------ documented formats
def test_nbest_tsv_parses_back(ckpt, tmp_path, sources):
    k = 3
    src = write(tmp_path / "in.de", [sources[0], "", *sources[1:4]])
    out = tmp_path / "nbest.tsv"
    assert run("--checkpoint", ckpt, "--input", src, "--output", out, "--nbest", k, "--length-penalty", "0",
               *FAST) == 0
    rows = [line.split("\t") for line in out_lines(out)]
    assert all(len(r) == 4 for r in rows)
    assert [(int(r[0]), int(r[1])) for r in rows] == [(i, j) for i in range(1, 6) for j in range(1, k + 1)]
    scores = [float(r[2]) for r in rows]
    assert all(re.fullmatch(r"-?\d+\.\d{6}|-inf", r[2]) for r in rows)
    assert rows[k:2 * k] == [["2", "1", "0.000000", ""], ["2", "2", "-inf", ""], ["2", "3", "-inf", ""]]
    for i in (0, 2, 3, 4):  # length penalty 0: ranked by score
        block = scores[i * k:(i + 1) * k]
        assert block == sorted(block, reverse=True) and all(math.isfinite(s) for s in block)
    # Rank 1 is the translation of a plain beam search of the same width.
    assert run("--checkpoint", ckpt, "--input", src, "--output", tmp_path / "beam.txt", "--beam-size", k,
               "--length-penalty", "0", *FAST) == 0
    assert out_lines(tmp_path / "beam.txt") == [r[3] for r in rows if r[1] == "1"]


def test_alignment_and_jsonl_parse_back(learned_ckpt, learnable_corpus, tmp_path):
    """On the model that has learned the toy pair: its translations are non-empty, so the alignment of
    the first line has pairs to check (an untrained model may stop at once and leave nothing)."""
    sources = (learnable_corpus / "val.de").read_text(encoding="utf-8").splitlines()[:3]
    src = write(tmp_path / "in.de", [sources[0], "", *sources[1:3]])
    for name, flags in (("a.txt", ["--alignment"]), ("a.jsonl", ["--alignment", "--format", "jsonl"]),
                        ("n.jsonl", ["--alignment", "--format", "jsonl", "--nbest", "2"]),
                        ("p.jsonl", ["--format", "jsonl"])):
        assert run("--checkpoint", learned_ckpt, "--input", src, "--output", tmp_path / name, *flags,
                   "--quiet") == 0
    text = [line.split("\t") for line in out_lines(tmp_path / "a.txt")]
    greedy, nbest, plain = (jsonl(tmp_path / n) for n in ("a.jsonl", "n.jsonl", "p.jsonl"))
    assert all(len(t) == 2 for t in text)
    assert set(plain[0]) == {"line", "translation", "score", "normalized_score", "finished"}
    assert [o["translation"] for o in plain] == [t for t, _ in text]
    for (translation, align), obj in zip(text, greedy):
        assert set(obj) == {"line", "translation", "score", "normalized_score", "finished", "alignment",
                            "src_pieces", "tgt_pieces"}
        assert (translation, align) == (obj["translation"], obj["alignment"])
        assert all(re.fullmatch(r"\d+-\d+", p) for p in align.split())
        pairs = [tuple(map(int, p.split("-"))) for p in align.split()]
        assert all(s < len(obj["src_pieces"]) and t < len(obj["tgt_pieces"]) for s, t in pairs)
        assert [t for _, t in pairs] == sorted({t for _, t in pairs})  # at most one pair per target piece
        length = len(obj["tgt_pieces"]) + int(obj["finished"])
        assert obj["normalized_score"] == pytest.approx(obj["score"] / max(length, 1))  # length_penalty 1
    assert text[1] == ["", ""] and greedy[1]["alignment"] == "" and greedy[1]["tgt_pieces"] == []
    assert greedy[0]["src_pieces"] and greedy[0]["alignment"]
    for i, obj in enumerate(nbest):
        assert set(obj) == {"line", "translation", "score", "normalized_score", "finished", "nbest",
                            "alignment", "src_pieces", "tgt_pieces"}
        assert len(obj["nbest"]) == (1 if i == 1 else 2) and obj["nbest"][0] == {
            "translation": obj["translation"], "score": obj["score"], "normalized_score": obj["normalized_score"]}
        assert all(isinstance(n["score"], float) for n in obj["nbest"])
    assert all(isinstance(o["score"], float) and isinstance(o["finished"], bool) for o in plain)


def test_score_reference_equals_own_greedy_score(learned_ckpt, learnable_corpus, tmp_path):
    """A finished translation fed back as its reference gets its own score. The model has learned the
    toy pair, so its greedy translations end with EOS by themselves (an untrained one runs to the
    length limit and would leave nothing to compare)."""
    src = learnable_corpus / "val.de"
    hyp = tmp_path / "hyp.jsonl"
    assert run("--checkpoint", learned_ckpt, "--input", src, "--output", hyp, "--format", "jsonl", "--alignment",
               "--quiet") == 0
    objs = jsonl(hyp)
    refs = write(tmp_path / "ref.en", [o["translation"] for o in objs])
    scored = tmp_path / "scores.jsonl"
    assert run("--checkpoint", learned_ckpt, "--input", src, "--score-reference", refs, "--output", scored,
               "--format", "jsonl", "--quiet") == 0
    tok = load_for_translation(learned_ckpt)[1]
    compared = 0
    for obj, got in zip(objs, jsonl(scored)):
        same_pieces = tok.tgt_pieces(tok.encode_tgt([obj["translation"]])[0]) == obj["tgt_pieces"]
        if not same_pieces:
            continue
        if obj["finished"]:
            assert got["score"] == pytest.approx(obj["score"], abs=1e-4)
            compared += int(bool(obj["tgt_pieces"]))
        else:  # the reference score adds EOS's log-probability
            assert got["score"] < obj["score"]
    assert compared >= len(objs) // 2, (compared, len(objs))


# ------------------------------------------------------------------------- ensembles and averages
def test_ensemble_of_two_averages_log_probs(ckpt, other_ckpt, tmp_path, sources):
    """`--ensemble a b` scores each output as the sum over its tokens of log_softmax((log p_a + log p_b) / 2),
    computed here step by step from the two models (the decoder-step contract), not by the Ensemble
    class. Mutations that make it fail: Ensemble.step returning the first member's log-probs, or the
    mean without renormalising."""
    src = write(tmp_path / "in.de", sources)
    out = tmp_path / "ens.jsonl"
    assert run("--ensemble", ckpt, other_ckpt, "--input", src, "--output", out, "--format", "jsonl",
               "--alignment", *FAST) == 0
    (m1, tok, _, _), (m2, *_) = load_for_translation(ckpt), load_for_translation(other_ckpt)
    piece_id = {p: i for i, p in enumerate(tok.tgt_pieces(range(tok.tgt_vocab_size)))}
    got = jsonl(out)
    single = 0.0
    for line, obj in zip(sources, got):
        ids = tok.encode_src([line])[0] + [EOS_ID]
        src_t = torch.tensor([ids])
        lengths, mask = torch.tensor([len(ids)]), torch.ones(1, len(ids), dtype=torch.bool)
        targets = [piece_id[p] for p in obj["tgt_pieces"]] + [EOS_ID] * obj["finished"]
        states = [m.init_state(src_t, lengths, mask) for m in (m1, m2)]
        prev, total, total1 = torch.tensor([m1.bos_id]), 0.0, 0.0
        with torch.no_grad():
            for token in targets:
                steps = [m.step(prev, st) for m, st in zip((m1, m2), states)]
                states = [st for _, st, _ in steps]
                mix = torch.log_softmax((steps[0][0] + steps[1][0]) / 2, dim=-1)
                total += float(mix[0, token])
                total1 += float(steps[0][0][0, token])
                prev = torch.tensor([token])
        assert obj["score"] == pytest.approx(total, abs=1e-4), line
        single += abs(total1 - total)
    assert single > 1e-2  # the members differ: the first one alone would score otherwise


def test_ensemble_needs_one_vocabulary(ckpt, tmp_path, sources, multi30k_dir, capsys):
    # Same vocabulary size (the weights load), other pieces: trained on another text.
    size = load_for_translation(ckpt)[1].tgt_vocab_size
    text = gzip.open(multi30k_dir / "val.en.gz", "rt", encoding="utf-8").read().splitlines()
    spm = train_sentencepiece(text, TokenizerConfig(vocab_size=size))
    other = derive(ckpt, tmp_path / "vocab.ckpt", lambda c: c[PAYLOAD_KEY].update(
        tokenizer=Tokenizer(spm, spm).state_dict()))
    load_for_translation(other)
    out = tmp_path / "out.txt"
    capsys.readouterr()
    assert run("--ensemble", ckpt, other, "--input", write(tmp_path / "in.de", sources), "--output", out) == 2
    assert "another sentencepiece model" in capsys.readouterr().err
    assert not out.exists()


def test_ensemble_needs_one_direction(ckpt, tmp_path, sources, capsys):
    """A joint vocabulary serves both directions of a pair, so the sentencepiece check alone would let
    a model of the other direction into an ensemble: the members' data.src_lang/tgt_lang must agree."""
    def swap(c):
        data = c[PAYLOAD_KEY]["config"]["data"]
        data["src_lang"], data["tgt_lang"] = data["tgt_lang"], data["src_lang"]

    other = derive(ckpt, tmp_path / "reverse.ckpt", swap)
    out = tmp_path / "out.txt"
    capsys.readouterr()
    assert run("--ensemble", ckpt, other, "--input", write(tmp_path / "in.de", sources), "--output", out) == 2
    err = capsys.readouterr().err
    assert f"--ensemble: {other} translates en->de, {ckpt} translates de->en" in err, err
    assert not out.exists()


def test_average_of_two_checkpoints_translates_like_their_mean(ckpt, other_ckpt, tmp_path, sources):
    """seq2seq-average of two different checkpoints translates exactly as a checkpoint holding the mean of
    their parameters (built here by hand), and not as either input. Mutation that makes it fail:
    average.py keeping the first checkpoint's weights."""
    avg = tmp_path / "avg.ckpt"
    assert average.main(["--output", str(avg), str(ckpt), str(other_ckpt)]) == 0
    b = torch.load(other_ckpt, map_location="cpu", weights_only=True)["state_dict"]
    mean = derive(ckpt, tmp_path / "mean.ckpt", lambda c: c["state_dict"].update(
        {k: (v + b[k]) / 2 for k, v in c["state_dict"].items() if v.is_floating_point()}))
    src = write(tmp_path / "in.de", sources)
    results = {}
    for name, model in (("avg", avg), ("mean", mean), ("a", ckpt), ("b", other_ckpt)):
        assert run("--checkpoint", model, "--input", src, "--output", tmp_path / f"{name}.jsonl", "--format",
                   "jsonl", "--beam-size", "2", *FAST) == 0
        results[name] = jsonl(tmp_path / f"{name}.jsonl")
    assert [o["translation"] for o in results["avg"]] == [o["translation"] for o in results["mean"]]
    assert [o["score"] for o in results["avg"]] == pytest.approx([o["score"] for o in results["mean"]], abs=1e-4)
    for other in ("a", "b"):
        assert [o["score"] for o in results["avg"]] != pytest.approx([o["score"] for o in results[other]], abs=1e-3)


def test_average_means_parameters_and_keeps_only_what_translation_needs(ckpt, other_ckpt, tmp_path):
    avg = tmp_path / "avg.ckpt"
    assert average.main(["--output", str(avg), str(ckpt), str(other_ckpt)]) == 0
    a, b, m = (torch.load(p, weights_only=True) for p in (ckpt, other_ckpt, avg))
    for key, value in m["state_dict"].items():
        assert value.dtype == a["state_dict"][key].dtype
        assert torch.allclose(value, (a["state_dict"][key] + b["state_dict"][key]) / 2, atol=1e-6)
    assert "optimizer_states" in a and "optimizer_states" not in m and "lr_schedulers" not in m
    assert m[PAYLOAD_KEY]["config"] == a[PAYLOAD_KEY]["config"]
    assert m[PAYLOAD_KEY]["tokenizer"] == a[PAYLOAD_KEY]["tokenizer"]
    assert m["averaged_from"] == [str(ckpt), str(other_ckpt)]
    load_for_translation(avg)  # usable as is


def test_average_last_n_of_a_folder(ckpt, other_ckpt, tmp_path, capsys):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for name, src, step in (("epoch000", ckpt, 10), ("epoch001", other_ckpt, 20), ("epoch002", ckpt, 30),
                            ("last", ckpt, 30), ("best", other_ckpt, 20)):
        derive(src, folder / f"{name}.ckpt", lambda c, s=step: c.update(global_step=s))
    out = folder / "avg.ckpt"
    for _ in range(2):  # the second run must not pick up the first one's output
        assert average.main(["--output", str(out), "--dir", str(folder), "--last", "2"]) == 0
        picked = [Path(p).name for p in torch.load(out, weights_only=True)["averaged_from"]]
        assert picked == ["epoch002.ckpt", "epoch001.ckpt"]  # newest first; last/best are duplicates
    assert torch.load(out, weights_only=True)["global_step"] == 30
    capsys.readouterr()
    assert average.main(["--output", str(tmp_path / "x.ckpt"), "--dir", str(folder), "--last", "4"]) == 2
    assert "only 3 checkpoint(s)" in capsys.readouterr().err
    assert not (tmp_path / "x.ckpt").exists()
    with pytest.raises(SystemExit):
        average.main(["--output", str(out), "--last", "2"])
    with pytest.raises(SystemExit):
        average.main(["--output", str(out)])


def test_average_refuses_mismatched_inputs(ckpt, tmp_path, capsys):
    vocab = derive(ckpt, tmp_path / "vocab.ckpt", lambda c: c[PAYLOAD_KEY].update(tokenizer=_small_tokenizer()))
    shape = derive(ckpt, tmp_path / "shape.ckpt",
                   lambda c: c[PAYLOAD_KEY]["config"]["model"].update(decoder_hidden_size=65))
    for odd, why in ((vocab, "sentencepiece"), (shape, "decoder_hidden_size")):
        capsys.readouterr()
        out = tmp_path / "avg.ckpt"
        assert average.main(["--output", str(out), str(ckpt), str(odd)]) == 2
        err = capsys.readouterr().err
        assert "error:" in err and str(odd) in err and why in err
        assert not out.exists()
    assert average.main(["--output", str(tmp_path / "no" / "avg.ckpt"), str(ckpt)]) == 2


# ----------------------------------------------------------------------------------- refusals
def _small_tokenizer() -> dict:
    src, tgt = synthetic_pairs(200)
    model = train_sentencepiece(src + tgt, TokenizerConfig(vocab_size=300))
    return Tokenizer(model, model).state_dict()


def test_checkpoint_that_does_not_match_its_weights_is_refused(ckpt, tmp_path, sources, capsys):
    src = write(tmp_path / "in.de", sources)
    cases = {
        "vocab": (lambda c: c[PAYLOAD_KEY].update(tokenizer=_small_tokenizer()), "do not match"),
        "config": (lambda c: c[PAYLOAD_KEY]["config"]["model"].update(encoder_hidden_size=48), "do not match"),
        "cell": (lambda c: c[PAYLOAD_KEY]["config"]["model"].update(cell="gru"), "do not match"),
        "no-config": (lambda c: c[PAYLOAD_KEY]["config"].pop("model"), "unusable"),
    }
    for name, (edit, message) in cases.items():
        bad = derive(ckpt, tmp_path / f"{name}.ckpt", edit)
        out = tmp_path / f"{name}.txt"
        capsys.readouterr()
        assert run("--checkpoint", bad, "--input", src, "--output", out) == 2, name
        err = capsys.readouterr().err
        assert err.startswith("error: checkpoint ") and str(bad) in err and message in err, err
        assert not out.exists() and not list(tmp_path.glob(f".{name}.txt.*"))


def test_invalid_utf8_stops_before_any_output(ckpt, tmp_path, capsys):
    src = tmp_path / "in.de"
    src.write_bytes("Ein Hund.\nZwei Katzen.\nDrei V\xf6gel.\n".encode("latin-1"))
    out = tmp_path / "out.txt"
    capsys.readouterr()
    assert run("--checkpoint", ckpt, "--input", src, "--output", out) == 2
    assert "line 3" in capsys.readouterr().err
    assert not out.exists() and list(tmp_path.iterdir()) == [src]
    assert run("--checkpoint", ckpt, "--input", src) == 2  # to stdout: nothing written
    captured = capsys.readouterr()
    assert captured.out == "" and "line 3" in captured.err


def test_output_in_missing_folder_errors_before_any_work(ckpt, tmp_path, sources, monkeypatch, capsys):
    def no_work(args):
        raise AssertionError("the model was loaded before the output folder was checked")

    monkeypatch.setattr(translate, "build_translator", no_work)
    assert run("--checkpoint", ckpt, "--input", write(tmp_path / "in.de", sources),
               "--output", tmp_path / "missing" / "out.txt") == 2
    assert "does not exist" in capsys.readouterr().err


def test_run_failing_midway_leaves_no_output(ckpt, tmp_path, sources, monkeypatch):
    src = write(tmp_path / "in.de", sources)
    out = tmp_path / "out.txt"
    calls = []
    real = Translator._search

    def flaky(self, *args, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("simulated failure in the third batch")
        return real(self, *args, **kw)

    monkeypatch.setattr(Translator, "_search", flaky)
    with pytest.raises(RuntimeError, match="third batch"):
        run("--checkpoint", ckpt, "--input", src, "--output", out, "--batch-tokens", "1", *FAST)
    assert not out.exists() and list(tmp_path.iterdir()) == [src]  # no partial file either
    out.write_text("previous result\n")
    calls.clear()
    with pytest.raises(RuntimeError):
        run("--checkpoint", ckpt, "--input", src, "--output", out, "--batch-tokens", "1", *FAST)
    assert out.read_text() == "previous result\n"  # an earlier complete file is not clobbered


def test_bad_flags_are_usage_errors(ckpt):
    for flags in (["--nbest", "0"], ["--beam-size", "0"], ["--temperature", "0", "--sample"],
                  ["--top-k", "-1"], ["--sample", "--nbest", "2"], ["--alignment", "--nbest", "2"],
                  ["--batch-tokens", "0"], ["--device", "tpu"]):
        with pytest.raises(SystemExit) as e:
            run("--checkpoint", ckpt, *flags)
        assert e.value.code == 2, flags


# ------------------------------------------------------------------------- plots and devices
def test_plot_attention_writes_pngs(ckpt, tmp_path, sources):
    plots = tmp_path / "plots"
    src = write(tmp_path / "in.de", ["", *sources[:4]])
    assert run("--checkpoint", ckpt, "--input", src, "--output", tmp_path / "out.txt", "--plot-attention", plots,
               "--plot-limit", "3", *FAST) == 0
    files = sorted(p.name for p in plots.iterdir())
    assert files == ["attention_00002.png", "attention_00003.png"]  # line 1 is empty
    assert all((plots / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for f in files)
    assert len(out_lines(tmp_path / "out.txt")) == 5


def test_device_and_precision_flags(ckpt, tmp_path, sources, capsys, caplog):
    src = write(tmp_path / "in.de", sources)
    jsonl_fast = ["--format", "jsonl", *FAST]  # scores with all their digits: any bf16 rounding shows
    assert run("--checkpoint", ckpt, "--input", src, "--output", tmp_path / "cpu.txt", "--device", "cpu",
               *jsonl_fast) == 0
    caplog.clear()
    assert run("--checkpoint", ckpt, "--input", src, "--output", tmp_path / "bf16.txt", "--device", "auto",
               "--precision", "bf16", *jsonl_fast) == 0
    if not torch.cuda.is_available():
        # --precision applies on a GPU only: on the CPU a warning says so and decoding is plain fp32
        # (mutation that makes this fail: translate.py keeping the bf16 dtype on the CPU).
        assert "applies on a GPU; translating in fp32 on the cpu" in caplog.text
        assert (tmp_path / "bf16.txt").read_bytes() == (tmp_path / "cpu.txt").read_bytes()
        capsys.readouterr()
        assert run("--checkpoint", ckpt, "--input", src, "--output", tmp_path / "gpu.txt", "--device", "cuda") == 2
        assert "no CUDA GPU" in capsys.readouterr().err and not (tmp_path / "gpu.txt").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_cuda_translation(ckpt, tmp_path, sources, precision):
    src = write(tmp_path / "in.de", [*sources, ""])
    out = tmp_path / "out.jsonl"
    assert run("--checkpoint", ckpt, "--input", src, "--output", out, "--device", "cuda", "--precision", precision,
               "--format", "jsonl", "--beam-size", "2", *FAST) == 0
    assert len(jsonl(out)) == len(sources) + 1
