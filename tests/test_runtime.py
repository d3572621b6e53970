"""The torch-free runtime against the torch backend, on a small trained model and its export folder:
greedy line for line, beam 5 best hypotheses and scores, the CLI's formats, int8 models on bad input,
and the runtime importing no torch at all."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from seq2seq.cli import translate
from seq2seq.checkpoint.format import MODEL_PREFIX, make_payload
from seq2seq.checkpoint.loading import load_for_translation
from seq2seq.config import ModelConfig, SearchConfig
from seq2seq.data.batching import collate
from seq2seq.data.tokenizer import EOS_ID, PAD_ID
from seq2seq.decoding.translator import Translator, one_line

from .conftest import synthetic_pairs, write_lines
from .helpers import REPO, tiny_model_and_tokenizer

pytest.importorskip("onnxruntime", reason='onnxruntime is missing: pip install -e ".[onnx]"')
pytest.importorskip("onnx", reason='onnx is missing: pip install -e ".[onnx]"')

from seq2seq.deploy.export import export  # noqa: E402
from seq2seq.deploy.runtime import OnnxTranslator  # noqa: E402

MODEL = ModelConfig(cell="gru", embedding_size=32, encoder_hidden_size=32, decoder_hidden_size=48,
                    encoder_layers=1, attention="luong_general", dropout=0.0, rnn_dropout=0.0)
# Empty, whitespace-only, control characters, emoji, combining marks, a very long line, a lone CR.
AWKWARD = ["", "   ", "\u2028x\u2029", "e\u0301\u0308 \U0001f600", "\x00\x1b[31m", "a" * 600, "\r",
           "the man runs", " ".join(["dog"] * 300)]
SLOW_FIXTURES = ("trained_ckpt",)  # seconds of training (tests/conftest.py: its tests are in the slow tier)


@pytest.fixture(scope="module")
def trained_ckpt(tmp_path_factory) -> Path:
    """A tiny GRU translator trained for a few seconds on the synthetic pairs (source words reversed).

    A plain optimisation loop rather than seq2seq-train: Lightning's run of the same size takes
    minutes on the shared 2-core CI machine. What matters here is a model whose outputs end with EOS
    at different steps and whose beams differ from greedy.
    """
    tmp = tmp_path_factory.mktemp("trained")
    model, tokenizer, (src, tgt) = tiny_model_and_tokenizer(MODEL, 600, 21, 320)
    pairs = list(zip(tokenizer.encode_src(src), tokenizer.encode_tgt(tgt)))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    for step in range(120):
        batch = collate([(i, s, t) for i, (s, t) in enumerate(pairs[(step * 32) % 576:][:32])])
        logits = model(batch.src, batch.src_lengths, batch.src_mask, batch.tgt_in)
        loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch.tgt_out, ignore_index=PAD_ID)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    config = {"model": dataclasses.asdict(MODEL), "data": {"src_lang": "de", "tgt_lang": "en"},
              "search": dataclasses.asdict(SearchConfig(max_len_a=3, max_len_b=1.2, batch_tokens=400))}
    path = tmp / "trained.ckpt"
    torch.save({"state_dict": {MODEL_PREFIX + k: v for k, v in model.state_dict().items()},
                "seq2seq": make_payload(config, tokenizer)}, path)
    return path


@pytest.fixture(scope="module")
def folder(trained_ckpt, tmp_path_factory) -> Path:
    return export(trained_ckpt, tmp_path_factory.mktemp("export") / "model-onnx")


@pytest.fixture(scope="module")
def folder_int8(trained_ckpt, tmp_path_factory) -> Path:
    return export(trained_ckpt, tmp_path_factory.mktemp("export") / "model-int8", quantize="int8")


@pytest.fixture(scope="module")
def sentences() -> list[str]:
    return synthetic_pairs(200, 99)[0]


def torch_translator(ckpt: Path, **search) -> Translator:
    model, tokenizer, cfg, _ = load_for_translation(ckpt)
    return Translator(model, tokenizer, dataclasses.replace(cfg, **search))


def onnx_translator(folder: Path, **search) -> OnnxTranslator:
    translator = OnnxTranslator(folder, threads=1)
    translator.cfg = dataclasses.replace(translator.cfg, **search)
    return translator


def test_greedy_equals_torch_line_for_line(trained_ckpt, folder, sentences):
    """Mutation caught: the maximum output length one token short (`t >= limit` for `t + 1 >= limit`)."""
    ours = onnx_translator(folder).translate(sentences)
    theirs = torch_translator(trained_ckpt).translate(sentences)
    assert [t.text for t in ours] == [t.text for t in theirs]
    assert [t.finished for t in ours] == [t.finished for t in theirs]
    assert max(abs(a.score - b.score) for a, b in zip(ours, theirs)) < 1e-4
    assert any(t.finished for t in theirs) and len({len(t.tokens) for t in theirs}) > 3  # a real test


def test_beam5_gives_the_same_best_hypotheses(trained_ckpt, folder, sentences):
    """Best hypothesis and n-best scores of beam 5 agree; a sentence may differ only where two
    hypotheses tie (normalised scores within 1e-4), and such sentences are named.

    Mutations caught: EOS candidates finalized beyond the first K ranks; ranking by raw score
    instead of score / length ** length_penalty."""
    search = dict(beam_size=5, length_penalty=1.0)
    ours = onnx_translator(folder, **search).translate(sentences, nbest=5)
    theirs = torch_translator(trained_ckpt, **search).translate(sentences, nbest=5)
    ties, wrong = [], []
    for i, (a, b) in enumerate(zip(ours, theirs)):
        if a.text == b.text and abs(a.score - b.score) < 1e-4:
            assert [c[1] for c in a.nbest] == pytest.approx([c[1] for c in b.nbest], abs=1e-4), f"line {i + 1}"
            continue
        norm = lambda t: t.score / t.length  # noqa: E731
        (ties if abs(norm(a) - norm(b)) < 1e-4 else wrong).append(i + 1)
    assert not wrong, f"beam 5 differs from torch on lines {wrong} (ties on lines {ties})"
    if ties:
        print(f"beam 5: tied hypotheses ordered differently on lines {ties}")
    greedy = torch_translator(trained_ckpt).translate(sentences)
    assert any(a.text != g.text for a, g in zip(theirs, greedy))  # beam search did something


@pytest.mark.parametrize("beam", [1, 2])
def test_min_len_agrees_with_torch(trained_ckpt, folder, sentences, beam):
    """min_len holds EOS back alike in both searches (PAD and BOS masked in both too). Mutation caught:
    the runtime's `forbidden` leaving EOS out."""
    search = dict(beam_size=beam, length_penalty=1.0, min_len=12)
    ours = onnx_translator(folder, **search).translate(sentences)
    theirs = torch_translator(trained_ckpt, **search).translate(sentences)
    free = torch_translator(trained_ckpt, beam_size=beam).translate(sentences)
    assert any(len(t.tokens) < 12 and t.finished for t in free)  # min_len changes something
    assert all(len(t.tokens) >= 12 for t in theirs if t.finished)
    assert [t.text for t in ours] == [t.text for t in theirs]
    assert max(abs(a.score - b.score) for a, b in zip(ours, theirs)) < 1e-4


def test_translate_cli_onnxruntime_backend_writes_the_torch_formats(trained_ckpt, folder, sentences, tmp_path):
    """text, jsonl with alignments, n-best TSV and reference scores: the same lines as the torch
    backend (scores compared to 1e-4, the rest exactly)."""
    src = write_lines(tmp_path / "in.de", sentences[:40] + [""])
    refs = write_lines(tmp_path / "ref.en", synthetic_pairs(200, 99)[1][:40] + ["x"])
    for name, flags in (("text", []), ("jsonl", ["--format", "jsonl", "--alignment", "--nbest", "3"]),
                        ("nbest", ["--nbest", "3"]), ("refs", ["--score-reference", str(refs)])):
        out_t, out_o = tmp_path / f"{name}.torch", tmp_path / f"{name}.onnx"
        assert translate.main(["--checkpoint", str(trained_ckpt), "--input", str(src), "--output", str(out_t),
                               "--quiet", *flags]) == 0
        assert translate.main(["--backend", "onnxruntime", "--model", str(folder), "--input", str(src),
                               "--output", str(out_o), "--quiet", *flags]) == 0
        lines_t = out_t.read_text(encoding="utf-8").splitlines()
        lines_o = out_o.read_text(encoding="utf-8").splitlines()
        assert len(lines_t) == len(lines_o) == 41 * (3 if name == "nbest" else 1), name
        for a, b in zip(lines_o, lines_t):
            if name == "jsonl":
                a, b = json.loads(a), json.loads(b)
                assert {k: v for k, v in a.items() if "score" not in k and k != "nbest"} == \
                       {k: v for k, v in b.items() if "score" not in k and k != "nbest"}
                assert a["score"] == pytest.approx(b["score"], abs=1e-4)
            elif name == "text":
                assert a == b
            else:
                fa, fb = a.split("\t"), b.split("\t")
                assert fa[:-2] + fa[-1:] == fb[:-2] + fb[-1:] if name == "nbest" else True
                assert float(fa[-2 if name == "nbest" else 0]) == pytest.approx(
                    float(fb[-2 if name == "nbest" else 0]), abs=1e-4)


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
@pytest.mark.parametrize("beam", ["1", "3"])
def test_int8_models_keep_one_line_per_input_line(trained_ckpt, folder_int8, tmp_path, backend, beam):
    """int8 (torch dynamic quantization, or an int8 export) on the bad inputs the torch path survives."""
    src = tmp_path / "awkward.txt"
    src.write_bytes(("\n".join(AWKWARD) + "\n").encode("utf-8"))
    out = tmp_path / "out.jsonl"
    model = (["--checkpoint", str(trained_ckpt), "--quantize", "int8"] if backend == "torch"
             else ["--model", str(folder_int8)])
    assert translate.main([*model, "--input", str(src), "--output", str(out), "--quiet", "--format", "jsonl",
                           "--beam-size", beam, "--max-src-tokens", "64"]) == 0
    rows = [json.loads(x) for x in out.read_text(encoding="utf-8").split("\n")[:-1]]
    assert [r["line"] for r in rows] == list(range(1, len(AWKWARD) + 1))
    assert rows[0]["translation"] == rows[1]["translation"] == ""
    assert all("\n" not in r["translation"] for r in rows)


def test_int8_export_is_smaller_and_still_translates(folder, folder_int8, sentences):
    """The matrix products run in int8 (GRU operators have no int8 kernel: they stay float32)."""
    import onnx

    size = lambda f: sum(p.stat().st_size for p in f.glob("*.onnx"))  # noqa: E731
    assert size(folder_int8) < 0.7 * size(folder)
    for graph in ("encoder.onnx", "decoder_step.onnx"):
        g = onnx.load(str(folder_int8 / graph)).graph
        weights = {t.name for t in g.initializer}
        float_products = [n.name for n in g.node if n.op_type in ("MatMul", "Gemm") and set(n.input) & weights]
        assert not float_products and any(n.op_type == "MatMulInteger" for n in g.node), (graph, float_products)
    assert json.loads((folder_int8 / "config.json").read_text())["quantization"] == "int8"
    fp32 = onnx_translator(folder).translate(sentences[:50])
    int8 = onnx_translator(folder_int8).translate(sentences[:50])
    assert sum(a.text == b.text for a, b in zip(fp32, int8)) >= 25  # close to fp32, not equal by force


# `import X` raises ImportError when sys.modules["X"] is None (as if X were not installed).
BLOCK_TORCH = "import sys\nsys.modules['torch'] = None\n"


def test_runtime_runs_where_importing_torch_fails(folder, tmp_path):
    """Mutation caught: `import torch` (or importing seq2seq.decoding.search) at the top of seq2seq/deploy/runtime.py."""
    code = BLOCK_TORCH + textwrap.dedent(f"""
        from seq2seq.deploy.runtime import OnnxTranslator
        t = OnnxTranslator({str(folder)!r}, threads=1)
        greedy = t.translate(["the man runs", "", "a red ball"])
        t.cfg.beam_size = 3
        beam = t.translate(["the man runs", "", "a red ball"], nbest=2)
        assert sys.modules["torch"] is None and not [m for m in sys.modules if m.startswith("torch.")]
        print(len(greedy), len(beam), greedy[1].text == "", len(beam[0].nbest))
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["3", "3", "True", "2"]


def test_without_the_extra_the_commands_name_it(trained_ckpt, tmp_path):
    """seq2seq-export and the onnxruntime backend say which extra to install when onnx is missing."""
    block = "import sys\nsys.modules['onnx'] = sys.modules['onnxruntime'] = None\n"
    code = block + textwrap.dedent(f"""
        from seq2seq.cli import export
        from seq2seq.cli import translate
        print("export", export.main(["--checkpoint", {str(trained_ckpt)!r}, "--output-dir", {str(tmp_path / "x")!r}]))
        (__import__("pathlib").Path({str(tmp_path)!r}) / "m").mkdir()
        (__import__("pathlib").Path({str(tmp_path)!r}) / "m" / "config.json").write_text('{{"format_version": 1, '
            '"graphs": {{}}, "state": [], "special_ids": {{}}, "search": {{}}, "sentencepiece": {{}}}}')
        print("translate", translate.main(["--model", {str(tmp_path / "m")!r}, "--input", "/dev/null", "--quiet"]))
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.stdout.split() == ["export", "2", "translate", "2"], proc.stderr[-3000:]
    assert proc.stderr.count('pip install -e ".[onnx]"') == 2, proc.stderr
    assert not (tmp_path / "x").exists()


def test_bad_export_folders_are_named(folder, tmp_path, capsys):
    src = write_lines(tmp_path / "in.de", ["the man runs"])
    assert translate.main(["--model", str(tmp_path / "nowhere"), "--input", str(src), "--quiet"]) == 2
    assert "nowhere is not an export folder (no config.json)" in capsys.readouterr().err
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in folder.iterdir():
        if f.name != "decoder_step.onnx":
            (broken / f.name).write_bytes(f.read_bytes())
    assert translate.main(["--model", str(broken), "--input", str(src), "--quiet"]) == 2
    assert f"{broken / 'decoder_step.onnx'} is missing" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        translate.main(["--model", str(folder), "--sample", "--input", str(src)])
    assert "--backend onnxruntime does not support --sample" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        translate.main(["--backend", "onnxruntime", "--checkpoint", "x.ckpt", "--input", str(src)])
    assert "--backend onnxruntime reads an export folder" in capsys.readouterr().err


def test_export_refuses_to_overwrite_a_folder_that_is_not_an_export(trained_ckpt, folder, tmp_path, capsys):
    from seq2seq.cli.export import main

    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    assert main(["--checkpoint", str(trained_ckpt), "--output-dir", str(other)]) == 2
    assert "exists and is not an export folder" in capsys.readouterr().err
    assert (other / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "decoder_step.onnx", "encoder.onnx",
                                                        "source.model", "target.model"]
    meta = json.loads((folder / "config.json").read_text())
    assert (meta["source_lang"], meta["target_lang"], meta["special_ids"]["eos"]) == ("de", "en", EOS_ID)
    assert meta["search"]["max_len_b"] == 1.2 and meta["model"]["cell"] == "gru"


def test_output_cleaning_matches_the_torch_side():
    from seq2seq.deploy.runtime import one_line as runtime_one_line

    for text in ["a\nb", "x\r\ny", " \t lots   of\x0b space ", "\x00\x1b[31mred\x7f", "\ufeffbom\u2028sep", "\x85nel"]:
        assert runtime_one_line(text) == one_line(text), repr(text)
