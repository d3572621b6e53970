"""Bad input through the real entry points: a clear message naming the key, file or line at fault,
a non-zero exit, and no partial output that looks complete.

Config and corpus errors found at the function level are tested in test_config.py, test_corpus.py
and test_prepare.py; here they go through `seq2seq-train` itself. To keep this file fast, one
subprocess runs the `seq2seq-train` entry point (`seq2seq.cli.train.main`, Hydra included) once per case,
and one case also runs as its own `python -m seq2seq.cli.train` process.
"""

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
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seq2seq.cli import translate
from seq2seq.checkpoint.format import FORMAT_VERSION, MODEL_PREFIX, make_payload
from seq2seq.config import ModelConfig, SearchConfig

from .conftest import synthetic_pairs, write_lines
from .helpers import REPO, tiny_model_and_tokenizer

# ---------------------------------------------------------------------------------------- seq2seq-train

DRIVER = textwrap.dedent("""
    # Run the seq2seq-train entry point once per case; report exit code and stderr as JSON.
    import contextlib, io, json, sys
    from hydra.core.global_hydra import GlobalHydra
    import seq2seq.cli.train as entry
    results = []
    for argv in json.load(open(sys.argv[1])):
        GlobalHydra.instance().clear()
        entry._task_started = False
        sys.argv = ["seq2seq-train", *argv]
        err, out, code = io.StringIO(), io.StringIO(), 0
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                entry.main()
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            except BaseException as e:  # a crash: the test reports it
                code = f"raised {e!r}"
        results.append({"code": code, "stderr": err.getvalue(), "stdout": out.getvalue()})
    print("RESULTS=" + json.dumps(results))
""")


def _toy(root: Path, n: int = 60) -> Path:
    for split, count, seed in (("train", n, 1), ("val", 10, 2), ("test_2016_flickr", 10, 3)):
        src, tgt = synthetic_pairs(count, seed)
        write_lines(root / f"{split}.de", src)
        write_lines(root / f"{split}.en", tgt)
    return root


def _train_cases(tmp: Path) -> dict[str, tuple[list[str], Path | None]]:
    """name -> (command-line arguments, the folder whose cache must stay empty)."""
    common = ["debug=tiny", "test_after_training=false"]

    def corpus(name: str, *extra: str) -> tuple[list[str], Path]:
        root, cache = tmp / name / "corpus", tmp / name / "cache"
        return [*common, f"data.root={root}", "data.mirrors=[]", "data.download=false", f"data.cache_dir={cache}",
                "data.tokenizer.vocab_size=60", "data.tokenizer.byte_fallback=false",
                f"hydra.run.dir={tmp / name / 'run'}", *extra], cache

    conf = tmp / "myconf" / "experiment"
    conf.mkdir(parents=True)
    (conf / "typo.yaml").write_text("# @package _global_\nmodel:\n  hiden_size: 64\n")
    cases = {
        "unknown_key_cli": ([*common, "model.cel=gru", f"hydra.run.dir={tmp / 'r1'}"], None),
        "unknown_key_file": (["--config-dir", str(tmp / "myconf"), *common, "experiment=typo",
                              f"hydra.run.dir={tmp / 'r2'}"], None),
        "wrong_type": ([*common, "model.encoder_layers=two", f"hydra.run.dir={tmp / 'r3'}"], None),
        "unknown_cell": ([*common, "model.cell=transformer", f"hydra.run.dir={tmp / 'r4'}"], None),
        "unknown_attention": ([*common, "model.attention=multihead", f"hydra.run.dir={tmp / 'r5'}"], None),
        "unknown_group_option": ([*common, "model=transformer", f"hydra.run.dir={tmp / 'r6'}"], None),
        "bad_max_bad_steps": ([*common, "max_bad_steps=-1", f"hydra.run.dir={tmp / 'r7'}"], None),
        "resume_without_last": ([*common, "ckpt_path=last", f"hydra.run.dir={tmp / 'r8'}"], None),
    }
    if not torch.cuda.is_available():
        cases["gpu_without_gpu"] = ([*common, "trainer=gpu", f"hydra.run.dir={tmp / 'r9'}"], None)
    # Corpora with one defect each.
    for name in ("missing_file", "counts_differ", "invalid_utf8", "empty_after_filter", "vocab_too_large"):
        _toy(tmp / name / "corpus")
    (tmp / "missing_file" / "corpus" / "train.en").unlink()
    with open(tmp / "counts_differ" / "corpus" / "train.de", "a", encoding="utf-8") as f:
        f.write("one line too many\n")
    bad = tmp / "invalid_utf8" / "corpus" / "val.en"
    lines = bad.read_bytes().split(b"\n")
    lines[6] = b"caf\xe9 au lait"  # Latin-1, not UTF-8: line 7
    bad.write_bytes(b"\n".join(lines))
    cases["missing_file"] = corpus("missing_file")
    cases["counts_differ"] = corpus("counts_differ")
    cases["invalid_utf8"] = corpus("invalid_utf8")
    cases["empty_after_filter"] = corpus("empty_after_filter", "data.filter.max_chars=3")
    cases["vocab_too_large"] = corpus("vocab_too_large", "data.tokenizer.vocab_size=5000")
    return cases


@pytest.fixture(scope="module")
def train_results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad_train")
    cases = _train_cases(tmp)
    (tmp / "cases.json").write_text(json.dumps([argv for argv, _ in cases.values()]))
    (tmp / "driver.py").write_text(DRIVER)
    env = {**os.environ, "PYTHONPATH": str(REPO), "HYDRA_FULL_ERROR": ""}
    env.pop("HYDRA_FULL_ERROR")
    # Meanwhile, one case as its own process, exactly as a user types it.
    single = subprocess.Popen([sys.executable, "-m", "seq2seq.cli.train", "model.cel=gru", f"hydra.run.dir={tmp / 'r0'}"],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc = subprocess.run([sys.executable, str(tmp / "driver.py"), str(tmp / "cases.json")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    out, err = single.communicate(timeout=600)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULTS=")), None)
    assert line, proc.stderr[-5000:]
    results = dict(zip(cases, json.loads(line[len("RESULTS="):])))
    results["process"] = {"code": single.returncode, "stderr": err, "stdout": out}
    return results, {name: cache for name, (_, cache) in cases.items()}


TRAIN_EXPECTED = {
    # name: (exit code, text the message must contain)
    "process": (2, "error: unknown config key 'model.cel'; valid keys under 'model': attention,"),
    "unknown_key_cli": (2, "error: unknown config key 'model.cel'; valid keys under 'model': attention,"),
    "unknown_key_file": (2, "error: unknown config key 'model.hiden_size'; valid keys under 'model': attention,"),
    "wrong_type": (2, "error: config key 'model.encoder_layers' must be an integer, got 'two'"),
    "unknown_cell": (2, "error: config key 'model.cell' is 'transformer'; valid options: rnn_tanh, rnn_relu, gru, lstm"),
    "unknown_attention": (2, "error: config key 'model.attention' is 'multihead'; valid options: bahdanau,"),
    "unknown_group_option": (2, "Could not find 'model/transformer'"),
    "bad_max_bad_steps": (2, "error: config key 'max_bad_steps' must be an integer >= 0"),
    "resume_without_last": (2, "error: config key 'ckpt_path' is 'last' but"),
    "gpu_without_gpu": (2, "error: config key 'trainer.accelerator' is 'gpu' but no CUDA GPU is visible"),
    "missing_file": (2, "train.en"),
    "counts_differ": (2, "61"),
    "invalid_utf8": (2, "val.en"),
    "empty_after_filter": (2, "dropped all 60 pairs"),
    "vocab_too_large": (2, "data.tokenizer.vocab_size"),
}


@pytest.mark.parametrize("name", list(TRAIN_EXPECTED))
def test_train_rejects_bad_input_cleanly(train_results, name):
    results, caches = train_results
    if name not in results:
        pytest.skip("a GPU is present")
    result = results[name]
    code, message = TRAIN_EXPECTED[name]
    assert result["code"] == code, result
    assert message in result["stderr"], result["stderr"]
    assert "Traceback" not in result["stderr"] and "Traceback" not in result["stdout"]
    assert len(result["stderr"].strip().splitlines()) <= 12  # a message, not a wall of text
    cache = caches.get(name)
    if cache is not None:  # nothing half-built left behind that a later run could take for complete
        assert not cache.exists() or not [p for p in cache.iterdir() if p.is_dir() and not p.name.startswith(".")]


def test_train_corpus_messages_name_file_and_line(train_results):
    results, _ = train_results
    assert "train.de" in results["counts_differ"]["stderr"] and "train.en" in results["counts_differ"]["stderr"]
    utf8 = results["invalid_utf8"]["stderr"]
    assert "val.en" in utf8 and "line 7" in utf8, utf8


# ---------------------------------------------------------------------------------------- seq2seq-translate

TINY_MODEL = ModelConfig(embedding_size=16, encoder_hidden_size=16, decoder_hidden_size=32, encoder_layers=1,
                         attention_size=16, dropout=0.0, rnn_dropout=0.0)


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    """A self-contained checkpoint of an untrained tiny model (what seq2seq-translate reads), built once."""
    tmp = tmp_path_factory.mktemp("ckpt")
    model, tokenizer, _ = tiny_model_and_tokenizer(TINY_MODEL, 300, 7, 300)
    config = {"model": dataclasses.asdict(TINY_MODEL),
              "search": dataclasses.asdict(SearchConfig(max_len_a=4, max_len_b=0.5, batch_tokens=512))}
    ckpt = {"state_dict": {MODEL_PREFIX + k: v for k, v in model.state_dict().items()},
            "seq2seq": make_payload(config, tokenizer)}
    path = tmp / "tiny.ckpt"
    torch.save(ckpt, path)
    return path


@pytest.fixture
def source(tmp_path) -> Path:
    return write_lines(tmp_path / "in.de", synthetic_pairs(30, 11)[0])


def run_translate(capsys, *args: str) -> tuple[int, str]:
    code = translate.main(["--quiet", *args])
    return code, capsys.readouterr().err


def test_translate_works_on_the_tiny_checkpoint(tiny_ckpt, source, tmp_path, capsys):
    out = tmp_path / "out.en"
    code, err = run_translate(capsys, "--checkpoint", str(tiny_ckpt), "--input", str(source), "--output", str(out))
    assert code == 0, err
    assert len(out.read_text(encoding="utf-8").split("\n")) == 31


def test_translate_missing_checkpoint(source, tmp_path, capsys):
    out = tmp_path / "out.en"
    code, err = run_translate(capsys, "--checkpoint", str(tmp_path / "nope.ckpt"), "--input", str(source),
                              "--output", str(out))
    assert code == 2
    assert err == f"error: checkpoint {tmp_path / 'nope.ckpt'} does not exist\n"
    assert not out.exists() and not list(tmp_path.glob(".out.en*"))


def test_translate_truncated_checkpoint(tiny_ckpt, source, tmp_path, capsys):
    broken = tmp_path / "broken.ckpt"
    data = tiny_ckpt.read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out.en"
    code, err = run_translate(capsys, "--checkpoint", str(broken), "--input", str(source), "--output", str(out))
    assert code == 2
    assert err.startswith(f"error: checkpoint {broken} cannot be read (") and "corrupt or not a checkpoint" in err
    assert not out.exists()


def test_translate_other_format_version(tiny_ckpt, source, tmp_path, capsys):
    ckpt = torch.load(tiny_ckpt, weights_only=True)
    ckpt["seq2seq"]["format_version"] = FORMAT_VERSION + 1
    other = tmp_path / "future.ckpt"
    torch.save(ckpt, other)
    code, err = run_translate(capsys, "--checkpoint", str(other), "--input", str(source))
    assert code == 2
    assert f"error: checkpoint {other} has format version {FORMAT_VERSION + 1}; this seq2seq reads version " \
           f"{FORMAT_VERSION}" in err


def test_translate_output_folder_missing(tiny_ckpt, source, tmp_path, capsys):
    out = tmp_path / "no" / "such" / "folder" / "out.en"
    code, err = run_translate(capsys, "--checkpoint", str(tiny_ckpt), "--input", str(source), "--output", str(out))
    assert code == 2
    assert err == f"error: output folder {out.parent} does not exist (for --output {out})\n"
    assert not (tmp_path / "no").exists()


def test_translate_invalid_utf8_input_names_the_line(tiny_ckpt, tmp_path, capsys):
    bad = tmp_path / "in.de"
    bad.write_bytes(b"ein Hund\nzwei \xff Katzen\n")
    out = tmp_path / "out.en"
    code, err = run_translate(capsys, "--checkpoint", str(tiny_ckpt), "--input", str(bad), "--output", str(out))
    assert code == 2 and str(bad) in err and "line 2" in err, err
    assert not out.exists()


@pytest.mark.parametrize("exc", [RuntimeError("simulated crash"), KeyboardInterrupt()])
def test_translate_interrupted_midway_leaves_no_complete_looking_output(tiny_ckpt, source, tmp_path, monkeypatch,
                                                                        exc):
    calls = []

    def progress(self, n):  # the translator reports every finished batch here
        calls.append(n)
        if len(calls) == 2:
            raise exc

    monkeypatch.setattr(translate.Progress, "__call__", progress)
    out = tmp_path / "out.en"
    out.write_text("the previous, complete output\n", encoding="utf-8")
    with pytest.raises(type(exc)):
        translate.main(["--checkpoint", str(tiny_ckpt), "--input", str(source), "--output", str(out),
                        "--batch-tokens", "40", "--quiet"])
    assert len(calls) == 2  # it was stopped after some batches, with more to go
    assert out.read_text(encoding="utf-8") == "the previous, complete output\n"  # untouched, not half-new
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.de", "out.en"]  # no temporary file left


def test_translate_killed_midway_leaves_no_output(tiny_ckpt, tmp_path):
    """SIGKILL during a real `python -m seq2seq.cli.translate`: no output file appears at all."""
    source = write_lines(tmp_path / "in.de", synthetic_pairs(400, 5)[0])
    out = tmp_path / "out.en"
    code = textwrap.dedent(f"""
        import os, signal, sys
        from seq2seq.cli import translate
        calls = []
        def progress(self, n):
            calls.append(n)
            if len(calls) == 3:
                os.kill(os.getpid(), signal.SIGKILL)
        translate.Progress.__call__ = progress
        sys.exit(translate.main(["--checkpoint", {str(tiny_ckpt)!r}, "--input", {str(source)!r},
                                 "--output", {str(out)!r}, "--batch-tokens", "40", "--quiet"]))
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert not out.exists()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name not in ("in.de",)]
    assert all(name.startswith(".out.en.") and name.endswith(".part") for name in leftovers), leftovers


# Lines as a user's file may hold them: combining marks, emoji, controls, long and empty lines.
_chars = st.one_of(
    st.characters(codec="utf-8", exclude_characters="\n"),
    st.sampled_from(["\u0301", "\u0308", "\u200d", "\ufe0f", "\U0001f600", "\U0001f468", "\U0001f469", "\r",
                     "\t", "\x00", "\x0b", "\x0c", "\x1b", "\x85", "\u2028", "\u2029", "\ufeff", "\x7f", " "]),
)
_line = st.one_of(st.text(_chars, max_size=30), st.just(""), st.text(_chars, min_size=300, max_size=600))


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(lines=st.lists(_line, min_size=0, max_size=12), final_newline=st.booleans())
def test_property_translate_keeps_the_line_count(tiny_ckpt, tmp_path, lines, final_newline):
    src = tmp_path / "prop.in"
    out = tmp_path / "prop.out"
    text = "\n".join(lines) + ("\n" if final_newline and lines else "")
    src.write_bytes(text.encode("utf-8"))
    body = text[1:] if text.startswith("\ufeff") else text  # a leading BOM is not content (corpus.read_lines)
    expected = body.count("\n") + (1 if body and not body.endswith("\n") else 0)
    code = translate.main(["--checkpoint", str(tiny_ckpt), "--input", str(src), "--output", str(out), "--quiet",
                           "--max-src-tokens", "64"])
    assert code == 0
    written = out.read_text(encoding="utf-8")
    assert written.count("\n") == expected
    assert written == "" or written.endswith("\n")


def test_translate_jsonl_keeps_the_line_count_for_awkward_lines(tiny_ckpt, tmp_path):
    lines = ["", "\u2028x\u2029", "e\u0301\u0308 \U0001f600", "\x00\x1b[31m", "a" * 600, "\r", " "]
    src = tmp_path / "in.txt"
    src.write_bytes(("\n".join(lines) + "\n").encode("utf-8"))
    out = tmp_path / "out.jsonl"
    assert translate.main(["--checkpoint", str(tiny_ckpt), "--input", str(src), "--output", str(out), "--quiet",
                           "--format", "jsonl"]) == 0
    rows = [json.loads(x) for x in out.read_text(encoding="utf-8").split("\n")[:-1]]
    assert [r["line"] for r in rows] == list(range(1, len(lines) + 1))


def test_translate_gzip_input_that_is_not_gzip(tiny_ckpt, tmp_path, capsys):
    fake = tmp_path / "in.de.gz"
    fake.write_bytes(b"not gzip at all\n")
    code, err = run_translate(capsys, "--checkpoint", str(tiny_ckpt), "--input", str(fake))
    assert code == 2 and str(fake) in err, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="asks for a GPU that is there")
@pytest.mark.parametrize("tool", ["translate", "tune-search", "generate", "distill", "ensemble_runs"])
def test_every_checkpoint_tool_refuses_device_cuda_without_a_gpu(tool, tiny_ckpt, source, tmp_path, capsys):
    """`--device cuda` on a machine without one: exit 2 with one line saying so, and nothing written
    (all of them ask `checkpoint.loading.load_device`)."""
    from seq2seq.cli import distill, ensemble, generate, tune_search

    out = tmp_path / "out"
    argv = {"translate": ["--checkpoint", str(tiny_ckpt), "--input", str(source), "--output", str(out)],
            "tune-search": ["--checkpoint", str(tiny_ckpt), "--dry-run"],
            "generate": ["--checkpoint", str(tiny_ckpt), "--prompt", "a", "--output", str(out)],
            "distill": [str(tiny_ckpt), "--out", str(out)],
            "ensemble_runs": [str(tiny_ckpt), str(tiny_ckpt), "--out", str(out)]}[tool]
    entry = {"translate": translate.main, "tune-search": tune_search.main, "generate": generate.main,
             "distill": distill.main, "ensemble_runs": ensemble.main}[tool]
    try:
        code = entry([*argv, "--device", "cuda"])
    except SystemExit as e:  # seq2seq-tune-search exits rather than returning its code
        code = e.code
    assert code == 2
    assert capsys.readouterr().err == "error: --device cuda was asked for, but no CUDA GPU is visible\n"
    assert not out.exists()
