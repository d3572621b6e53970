"""seq2seq-score command line: text / JSON output, file handling, errors, paired bootstrap."""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from seq2seq.evaluation.metrics import score_corpus
from seq2seq.cli.score import main
from seq2seq.evaluation.scoring import read_lines

REFS = [
    "The cat sits on the mat.",
    "A man is riding a red bicycle down the street.",
    "Two children play football in the park.",
    "A woman in a blue dress is reading a book.",
] * 3
HYPS = [
    "The cat sat on the mat.",
    "A man rides a red bike down the street.",
    "Two kids are playing soccer in a park.",
    "A woman in a blue dress reads a book.",
] * 3
WORSE = ["cat mat", "man bike street", "kids soccer", "woman book"] * 3


def write(path, lines, newline="\n", gz=False, bom=False):
    data = ("\ufeff" if bom else "") + "".join(line + newline for line in lines)
    raw = data.encode("utf-8")
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return str(path)


@pytest.fixture
def files(tmp_path):
    return {"hyp": write(tmp_path / "hyp.txt", HYPS), "ref": write(tmp_path / "ref.txt", REFS),
            "worse": write(tmp_path / "worse.txt", WORSE)}


LINE = re.compile(r"^(BLEU|chrF2|TER) = \d+\.\d\d \(signature: nrefs:1\|[^ ]+\)$")


def test_text_output(files, capsys):
    assert main(["--hyp", files["hyp"], "--ref", files["ref"]]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and all(LINE.match(ln) for ln in lines), lines
    expected = score_corpus(HYPS, [REFS])
    assert lines[0] == f"BLEU = {expected['bleu']:.2f} (signature: {expected['signature']['bleu']})"


def test_json_output(files, capsys):
    assert main(["--hyp", files["hyp"], "--ref", files["ref"], "--json", "--lowercase",
                 "--metrics", "bleu,ter"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["lines"] == len(HYPS) and out["lowercase"] is True and out["tokenize"] == "13a"
    assert set(out["scores"]) == {"bleu", "ter"}
    expected = score_corpus(HYPS, [REFS], lowercase=True)
    assert out["scores"]["bleu"]["score"] == pytest.approx(expected["bleu"])
    assert out["scores"]["bleu"]["signature"] == expected["signature"]["bleu"]
    assert "case:lc" in out["scores"]["ter"]["signature"]
    assert "compare" not in out


def test_gzip_crlf_bom_and_odd_separators(tmp_path, files, capsys):
    gz = write(tmp_path / "hyp.txt.gz", HYPS, newline="\r\n", gz=True, bom=True)
    assert read_lines(gz) == HYPS
    assert main(["--hyp", gz, "--ref", files["ref"], "--json"]) == 0
    a = json.loads(capsys.readouterr().out)["scores"]
    assert main(["--hyp", files["hyp"], "--ref", files["ref"], "--json"]) == 0
    b = json.loads(capsys.readouterr().out)["scores"]
    assert a == b
    # Only LF (or CRLF) ends a line; no final newline is fine; a blank line is a segment.
    odd = tmp_path / "odd.txt"
    odd.write_bytes("a\u2028b\x0cc\rd\r\n\ne".encode())
    assert read_lines(str(odd)) == ["a\u2028b\x0cc\rd", "", "e"]
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    assert read_lines(str(empty)) == []


def test_multiple_references(tmp_path, files, capsys):
    ref2 = write(tmp_path / "ref2.txt", HYPS)
    assert main(["--hyp", files["hyp"], "--ref", files["ref"], "--ref", ref2, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["refs"] == [files["ref"], ref2]
    assert out["scores"]["bleu"]["score"] == pytest.approx(100.0)
    assert out["scores"]["bleu"]["signature"].startswith("nrefs:2|")


def test_line_count_mismatch(tmp_path, files, capsys):
    short = write(tmp_path / "short.txt", REFS[:5])
    assert main(["--hyp", files["hyp"], "--ref", short]) == 2
    err = capsys.readouterr().err
    assert files["hyp"] in err and short in err
    assert f"has {len(HYPS)} lines" in err and "has 5 lines" in err
    assert main(["--hyp", files["hyp"], "--ref", files["ref"], "--compare", short]) == 2
    err = capsys.readouterr().err
    assert short in err and "has 5 lines" in err


def test_input_errors(tmp_path, files, capsys):
    missing = str(tmp_path / "nope.txt")
    assert main(["--hyp", missing, "--ref", files["ref"]]) == 2
    assert "file not found" in capsys.readouterr().err
    assert main(["--hyp", files["hyp"], "--ref", missing]) == 2
    assert missing in capsys.readouterr().err
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok\nstill ok\n\xff\xfe broken\n")
    assert main(["--hyp", str(bad), "--ref", files["ref"]]) == 2
    assert "invalid UTF-8 at line 3" in capsys.readouterr().err
    for argv in (["--metrics", "bleu,meteor"], ["--tokenize", "flores200"], ["--tokenize", "spm"]):
        with pytest.raises(SystemExit) as e:
            main(["--hyp", files["hyp"], "--ref", files["ref"], *argv])
        assert e.value.code == 2
    assert main(["--hyp", files["hyp"], "--ref", files["ref"], "--compare", files["worse"],
                 "--seed", "0"]) == 2
    assert "--seed" in capsys.readouterr().err


def test_compare_bootstrap(files, capsys):
    argv = ["--hyp", files["hyp"], "--ref", files["ref"], "--compare", files["worse"],
            "--bootstrap-samples", "200", "--seed", "3"]
    assert main(argv + ["--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    cmp = out["compare"]
    assert cmp["hyp"] == files["worse"] and cmp["n_samples"] == 200 and cmp["seed"] == 3
    for m in ("bleu", "chrf", "ter"):
        assert 0 < cmp["metrics"][m]["system"]["p_value"] < 0.05
        assert cmp["metrics"][m]["baseline"]["score"] == pytest.approx(out["scores"][m]["score"])
        assert "bs:200" in cmp["metrics"][m]["signature"]
    assert main(argv) == 0
    text = capsys.readouterr().out.splitlines()
    assert text[0].startswith("Paired bootstrap resampling (200 samples, seed 3)")
    assert len(text) == 4
    for line in text[1:]:
        assert files["hyp"] in line and files["worse"] in line
        assert re.search(r"p = 0\.\d{4} \(signature: ", line)


def test_console_module_runs(files):
    """`python -m seq2seq.cli.score`, hypotheses from stdin."""
    root = Path(__file__).resolve().parents[1]
    run = lambda *argv, **kw: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "seq2seq.cli.score", *argv], capture_output=True, text=True, cwd=root, **kw)
    proc = run("--hyp", "-", "--ref", files["ref"], "--metrics", "bleu",
               input=Path(files["hyp"]).read_text())
    assert proc.returncode == 0, proc.stderr
    assert LINE.match(proc.stdout.strip())
    proc = run("--hyp", files["hyp"], "--ref", files["ref"] + ".missing")
    assert proc.returncode == 2 and "file not found" in proc.stderr


def test_several_sets_in_one_table_and_json(tmp_path, files, capsys):
    """`--set NAME HYP REF` twice: one table row per set, in order, with the figures score_corpus gives
    (cased BLEU/chrF/TER, lowercased BLEU) and the signatures; --json holds the same rows.
    Mutation that makes it fail: `evaluation.make_row` taking bleu_lc from the cased scores."""
    lower = write(tmp_path / "lower.txt", [h.lower() for h in HYPS])
    argv = ["--set", "good", files["hyp"], files["ref"], "--set", "lower", lower, files["ref"]]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:6] == ["split", "sentences", "BLEU", "chrF", "TER", "BLEU(lc)"]
    for line, hyps in zip(lines[1:3], (HYPS, [h.lower() for h in HYPS])):
        cased, lowercase = score_corpus(hyps, [REFS]), score_corpus(hyps, [REFS], lowercase=True)
        cells = line.split()
        assert [float(c) for c in cells[2:6]] == pytest.approx(
            [cased["bleu"], cased["chrf"], cased["ter"], lowercase["bleu"]], abs=0.006)
        assert cells[6] == cased["signature"]["bleu"]
    assert [ln.split()[0] for ln in lines[1:3]] == ["good", "lower"]
    assert any(ln.startswith("BLEU(lc) signature: nrefs:1|case:lc|") for ln in lines)
    assert main([*argv, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["splits"]
    assert [r["split"] for r in rows] == ["good", "lower"] and rows[1]["bleu_lc"] == pytest.approx(rows[0]["bleu_lc"])
    assert rows[1]["bleu"] < rows[0]["bleu"]  # lowercased hypotheses lose cased matches only


def test_set_errors(tmp_path, files, capsys):
    short = write(tmp_path / "short.txt", REFS[:5])
    assert main(["--set", "a", files["hyp"], files["ref"], "--set", "b", files["hyp"], short]) == 2
    assert "has 5 lines" in capsys.readouterr().err
    for extra in (["--hyp", files["hyp"]], ["--lowercase"], ["--set", "a", files["hyp"], files["ref"]]):
        with pytest.raises(SystemExit) as e:
            main(["--set", "a", files["hyp"], files["ref"], *extra])
        assert e.value.code == 2
    with pytest.raises(SystemExit):
        main([])
    assert "--hyp and --ref (or --set NAME HYP REF)" in capsys.readouterr().err


def test_tokenize_moses_reports_both_figures(tmp_path, capsys):
    """`--tokenize moses --lang fr`: the standard 13a BLEU, then the lowercased Moses-tokenized BLEU (the
    Multi30k papers' figure), then chrF and TER; in JSON as scores.bleu and scores.bleu_moses. The figures
    are test_metrics.py's hand-computed French case. Mutation that makes it fail: score.py scoring the
    standard figure with `args.tokenize` ("moses", not a sacrebleu tokenizer) instead of 13a."""
    from .helpers import require

    require("sacremoses")
    ref = write(tmp_path / "ref.fr", ["L'homme porte un t-shirt."])
    hyp = write(tmp_path / "hyp.fr", ["Un homme porte un t-shirt."])
    assert main(["--hyp", hyp, "--ref", ref, "--tokenize", "moses", "--lang", "fr"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and all(LINE.match(ln) for ln in lines), lines
    assert lines[0].startswith(f"BLEU = {100 * (1 / 15) ** 0.25:.2f} (signature: nrefs:1|case:mixed|eff:no|tok:13a|")
    assert lines[1].startswith(f"BLEU = {100 * (1 / 3) ** 0.25:.2f} (signature: nrefs:1|case:lc|eff:no|tok:moses-fr|")
    assert lines[2].startswith("chrF2 = ") and lines[3].startswith("TER = ")
    assert main(["--hyp", hyp, "--ref", ref, "--tokenize", "moses", "--lang", "fr", "--json", "--metrics", "bleu"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["tokenize"] == "moses" and out["lang"] == "fr" and set(out["scores"]) == {"bleu", "bleu_moses"}
    assert out["scores"]["bleu"]["score"] == pytest.approx(100 * (1 / 15) ** 0.25)
    assert out["scores"]["bleu_moses"]["score"] == pytest.approx(100 * (1 / 3) ** 0.25)
    assert "tok:moses-fr" in out["scores"]["bleu_moses"]["signature"]


def test_tokenize_moses_usage_errors(files, capsys, monkeypatch):
    from .helpers import require

    require("sacremoses")
    base = ["--hyp", files["hyp"], "--ref", files["ref"]]
    for argv, message in ((["--tokenize", "moses"], "--tokenize moses needs --lang"),
                          (["--lang", "en"], "--lang applies to --tokenize moses only"),
                          (["--tokenize", "moses", "--lang", "xx"], "argument --lang: no Moses rules for 'xx'"),
                          (["--tokenize", "moses", "--lang", "en", "--compare", files["worse"]], "--compare"),
                          (["--tokenize", "moses", "--lang", "en", "--metrics", "chrf"], "leaves out bleu")):
        with pytest.raises(SystemExit) as e:
            main(base + argv)
        assert e.value.code == 2 and message in capsys.readouterr().err, argv
    monkeypatch.setitem(sys.modules, "sacremoses", None)  # not installed
    assert main(base + ["--tokenize", "moses", "--lang", "en"]) == 2
    assert "pip install 'seq2seq[moses]'" in capsys.readouterr().err


def test_sets_with_moses_tokenization_add_the_papers_column(tmp_path, capsys):
    """`--set ... --tokenize moses --lang fr`: the table keeps the standard 13a figures and adds a
    BLEU(moses) column with its signature (the French case of test_tokenize_moses_reports_both_figures).
    Mutation that makes it fail: score_sets passing `moses_lang=None` to score_set."""
    from .helpers import require

    require("sacremoses")
    ref = write(tmp_path / "ref.fr", ["L'homme porte un t-shirt."])
    hyp = write(tmp_path / "hyp.fr", ["Un homme porte un t-shirt."])
    assert main(["--set", "fr", hyp, ref, "--tokenize", "moses", "--lang", "fr"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:7] == ["split", "sentences", "BLEU", "chrF", "TER", "BLEU(lc)", "BLEU(moses)"]
    cells = lines[1].split()
    assert float(cells[2]) == pytest.approx(100 * (1 / 15) ** 0.25, abs=0.006)
    assert float(cells[6]) == pytest.approx(100 * (1 / 3) ** 0.25, abs=0.006)
    assert any(ln.startswith("BLEU(moses) signature: nrefs:1|case:lc|eff:no|tok:moses-fr|") for ln in lines)
