"""seq2seq-serve: the HTTP API in-process (FastAPI's TestClient), a real uvicorn process (disconnects,
SIGTERM), and the page in headless Chromium.

The model is a tiny one trained for a few steps on the synthetic toy corpus (tests/conftest.py): its
output is junk, but junk that the server and `seq2seq-translate` must agree on exactly.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'seq2seq[serve]'")
import httpx  # noqa: E402  (the TestClient's transport; installed with the serve extra)
from fastapi.testclient import TestClient  # noqa: E402

from seq2seq.cli import serve as serve_cli  # noqa: E402
from seq2seq.serving import app as serve  # noqa: E402

from seq2seq.cli import translate
from seq2seq.serving.dynamic_batcher import DynamicBatcher  # noqa: E402
from seq2seq.serving.app import Engine, Limits, create_app  # noqa: E402
from seq2seq.training.run import train  # noqa: E402
from seq2seq.decoding.translator import Translator  # noqa: E402

from .conftest import synthetic_pairs, write_lines  # noqa: E402
from .helpers import REPO, TINY, compose_train  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A tiny model trained (in-process) for a few steps on the synthetic toy corpus."""
    tmp = tmp_path_factory.mktemp("serve")
    for split, n, seed in (("train", 300, 1), ("val", 20, 2), ("test_2016_flickr", 10, 3)):
        src, tgt = synthetic_pairs(n, seed)
        write_lines(tmp / "corpus" / f"{split}.de", src)
        write_lines(tmp / "corpus" / f"{split}.en", tgt)
    cfg = compose_train([*TINY, "test_after_training=false", f"data.root={tmp / 'corpus'}", "data.mirrors=[]",
                         "data.download=false", f"data.cache_dir={tmp / 'cache'}", "data.tokenizer.vocab_size=60",
                         "data.tokenizer.byte_fallback=false"], tmp / "run")
    train(cfg)
    return tmp / "run" / "checkpoints" / "best.ckpt"


@pytest.fixture(scope="module")
def engine(ckpt) -> Engine:
    return Engine.load(str(ckpt), "cpu")


@pytest.fixture(scope="module")
def client(engine):
    with TestClient(create_app(engine, Limits(max_lines=10, max_chars=1000, max_beam=8))) as c:
        yield c


# Toy sentences, an empty line, and lines with a tab, runs of spaces and control characters (cleaned
# like a file's lines).
LINES = [*synthetic_pairs(5, seed=7)[0], "", "the  dog\truns   on the street", "a\x1b cat\x07 sits", "\x07\x1b"]


def script_jsonl(ckpt: Path, tmp: Path, lines: list[str], *flags: str) -> list[dict]:
    src = tmp / "in.txt"
    src.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    out = tmp / "out.jsonl"
    assert translate.main(["--checkpoint", str(ckpt), "--input", str(src), "--output", str(out),
                           "--format", "jsonl", "--quiet", *flags]) == 0
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


def assert_same(server: dict, script: dict) -> None:
    """Texts, pieces and alignments exactly; scores to float32 precision (batch composition may
    change the last bit of a matrix product, as in test_translate's batched-vs-single tests)."""
    assert server["translation"] == script["translation"]
    assert server["finished"] == script["finished"]
    assert server["score"] == pytest.approx(script["score"], rel=1e-5, abs=1e-6)
    assert server["normalized_score"] == pytest.approx(script["normalized_score"], rel=1e-5, abs=1e-6)
    if "nbest" in script:
        assert [n["translation"] for n in server["nbest"]] == [n["translation"] for n in script["nbest"]]
        assert [n["score"] for n in server["nbest"]] == pytest.approx([n["score"] for n in script["nbest"]],
                                                                      rel=1e-5, abs=1e-6)
    for key in ("alignment", "src_pieces", "tgt_pieces"):
        if key in script:
            assert server[key] == script[key], key


# ------------------------------------------------------------------------------ same as the script
@pytest.mark.parametrize("request_flags", [
    ({}, []),
    ({"beam_size": 3, "nbest": 3, "length_penalty": 0.6, "alignment": True},
     ["--beam-size", "3", "--nbest", "3", "--length-penalty", "0.6", "--alignment"]),
    ({"sample": True, "temperature": 0.7, "top_k": 5, "seed": 11}, ["--sample", "--temperature", "0.7",
                                                                    "--top-k", "5", "--seed", "11"]),
], ids=["greedy", "beam-nbest-alignment", "sampling"])
def test_a_line_through_the_server_equals_the_script(client, ckpt, tmp_path, request_flags):
    """Mutation: the server skipping one_line (input cleaning), or Engine.translate passing nbest=1 or
    with_attention=False, fails here."""
    settings, flags = request_flags
    expected = script_jsonl(ckpt, tmp_path, LINES, *flags)
    r = client.post("/translate", json={"text": LINES, **settings})
    assert r.status_code == 200, r.text
    got = r.json()["translations"]
    assert len(got) == len(LINES)
    for server, script in zip(got, expected):
        assert_same(server, script)
    assert got[LINES.index("")]["translation"] == ""
    if settings.get("alignment"):
        t = got[0]
        assert len(t["attention"]) == len(t["tgt_pieces"]) + t["finished"]
        assert {len(row) for row in t["attention"]} == {len(t["src_pieces"]) + 1}


def test_a_single_string_is_one_line_and_its_line_breaks_are_spaces(client, ckpt, tmp_path):
    one = client.post("/translate", json={"text": "the dog\nruns on\r\nthe street"}).json()["translations"]
    assert len(one) == 1
    assert_same(one[0], script_jsonl(ckpt, tmp_path, ["the dog runs on the street"])[0])


def test_simultaneous_single_line_requests_each_get_their_own_line(engine, ckpt, tmp_path):
    """Many one-line requests at once, batched together, each answered with its own line's translation.
    Mutation: routing results by batch position without each request's offset fails here."""
    expected = script_jsonl(ckpt, tmp_path, LINES)
    with TestClient(create_app(engine, max_wait_ms=200)) as c:
        got = [None] * len(LINES)

        def ask(i):
            got[i] = c.post("/translate", json={"text": LINES[i]}).json()["translations"][0]

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(LINES))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert c.get("/info").json()["batching"]["search_calls"] < len(LINES)
    for server, script in zip(got, expected):
        assert_same(server, script)


# ------------------------------------------------------------------------------ dynamic batching
class CountingTranslate:
    """Wraps Translator.translate: records the lines of every search call."""

    def __init__(self, monkeypatch):
        self.calls: list[list[str]] = []
        original = Translator.translate

        def counted(translator, lines, *args, **kwargs):
            self.calls.append(list(lines))
            return original(translator, lines, *args, **kwargs)

        monkeypatch.setattr(Translator, "translate", counted)


def simultaneously(client, bodies: list[dict]) -> list[httpx.Response]:
    out = [None] * len(bodies)
    barrier = threading.Barrier(len(bodies))

    def ask(i):
        barrier.wait()
        out[i] = client.post("/translate", json=bodies[i])

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


@pytest.mark.parametrize("batching", [True, False])
def test_two_simultaneous_requests_share_one_search_call(engine, monkeypatch, batching):
    """With batching on, two requests arriving together make ONE Translator.translate call holding both
    requests' lines, and each gets its own lines back; with --no-batching they make two.
    Mutation: DynamicBatcher._take returning only the oldest request gives two calls here."""
    calls = CountingTranslate(monkeypatch)
    a, b = ["the man runs", "a dog sits"], ["the red car"]
    with TestClient(create_app(engine, max_wait_ms=500, batching=batching)) as c:
        ra, rb = simultaneously(c, [{"text": a}, {"text": b}])
    assert ra.status_code == rb.status_code == 200
    if batching:
        assert len(calls.calls) == 1 and sorted(calls.calls[0]) == sorted(a + b)
    else:
        assert sorted(map(tuple, calls.calls)) == sorted([tuple(a), tuple(b)])
    alone = {line: t.text for line, t in zip(a + b, engine.translate(serve.Settings(1, 1, 1.0, False), a + b))}
    assert [t["translation"] for t in ra.json()["translations"]] == [alone[x] for x in a]
    assert [t["translation"] for t in rb.json()["translations"]] == [alone[x] for x in b]


def test_requests_with_different_settings_or_sampling_are_not_merged(engine, monkeypatch):
    """Different search settings cannot share a search; sampling requests never do (so a seed reproduces
    the script's samples). Mutation: a Settings key without beam_size merges the first two."""
    calls = CountingTranslate(monkeypatch)
    with TestClient(create_app(engine, max_wait_ms=300)) as c:
        responses = simultaneously(c, [{"text": "the man"}, {"text": "a dog", "beam_size": 2},
                                       {"text": "the car", "sample": True}, {"text": "the cat", "sample": True}])
    assert all(r.status_code == 200 for r in responses)
    assert sorted(calls.calls) == [["a dog"], ["the car"], ["the cat"], ["the man"]]


def test_token_budget_splits_a_burst_into_several_calls(engine, monkeypatch):
    """Requests beyond the token budget wait for the next call. Mutation: ignoring max_tokens in _take."""
    calls = CountingTranslate(monkeypatch)
    tokens = engine.count_tokens(["the man runs on the street"])
    with TestClient(create_app(engine, batch_tokens=2 * tokens, max_wait_ms=300)) as c:
        responses = simultaneously(c, [{"text": "the man runs on the street"}] * 4)
    assert all(r.status_code == 200 for r in responses)
    assert [len(call) for call in calls.calls] == [2, 2]


def test_a_request_cancelled_before_its_batch_is_never_translated():
    """A client gone while its request waits in the queue costs no search. Mutation: _take not
    dropping cancelled futures translates 'gone' too."""
    import asyncio

    seen = []

    def fake_translate(key, lines):
        seen.append(list(lines))
        return [line.upper() for line in lines]

    async def scenario():
        batcher = DynamicBatcher(fake_translate, max_tokens=100, max_wait_s=0.2)
        batcher.start()
        gone = asyncio.ensure_future(batcher.submit("k", ["gone"], 1))
        stays = asyncio.ensure_future(batcher.submit("k", ["stays"], 1))
        await asyncio.sleep(0.05)
        gone.cancel()
        result = await stays
        await batcher.stop()
        return result

    assert asyncio.run(scenario()) == ["STAYS"]
    assert seen == [["stays"]]


def test_the_server_answers_while_a_search_runs(engine, monkeypatch):
    """The search runs off the event loop: /health answers while a (slowed-down) search is in progress.
    Mutation: calling self.translate directly in DynamicBatcher._run (on the loop) fails here."""
    original = serve.Engine.translate
    started = threading.Event()

    def slow(self, settings, lines):
        started.set()
        time.sleep(1.5)
        return original(self, settings, lines)

    monkeypatch.setattr(serve.Engine, "translate", slow)
    with TestClient(create_app(engine, max_wait_ms=0)) as c:
        t = threading.Thread(target=lambda: c.post("/translate", json={"text": "the man"}))
        t.start()
        assert started.wait(10)
        begin = time.monotonic()
        assert c.get("/health").status_code == 200
        assert time.monotonic() - begin < 1.0
        t.join()


def test_a_failing_search_answers_its_requests_and_the_server_goes_on(engine, monkeypatch):
    """An exception inside a search call becomes that request's 500 naming the error, not a dead worker."""
    original = serve.Engine.translate

    def flaky(self, settings, lines):
        if "boom" in lines:
            raise RuntimeError("simulated failure")
        return original(self, settings, lines)

    monkeypatch.setattr(serve.Engine, "translate", flaky)
    with TestClient(create_app(engine, max_wait_ms=0), raise_server_exceptions=False) as c:
        bad = c.post("/translate", json={"text": "boom"})
        assert bad.status_code == 500 and "RuntimeError" in bad.json()["error"]
        assert c.post("/translate", json={"text": "the man"}).status_code == 200


# ------------------------------------------------------------------------------ errors
TOO_LONG = "x" * 1001
ERRORS = [  # (raw body, status, words the error message must contain)
    (json.dumps({"text": ["a"] * 11}), 413, ["11 lines", "limit of 10 lines", "--max-lines"]),
    (json.dumps({"text": TOO_LONG}), 413, ["1001 characters", "limit of 1000", "--max-chars"]),
    (json.dumps({"text": "x" * 2_000_000}), 413, ["bytes", "--max-chars"]),
    ('{"text": "a"', 422, ["malformed JSON"]),
    ("", 422, ["JSON object", "text"]),
    ('["a"]', 422, ["JSON object", "text"]),
    ("{}", 422, ["text", "required"]),
    ('{"text": 3}', 422, ["text", "string or a list of strings"]),
    ('{"text": ["a", 1]}', 422, ["text[1]", "string"]),
    ('{"text": "a", "beam_size": "5"}', 422, ["beam_size", "integer"]),
    ('{"text": "a", "beam_size": 0}', 422, ["beam_size", "greater than or equal to 1"]),
    ('{"text": "a", "beam_size": 9}', 422, ["beam_size", "less than or equal to 8", "--max-beam"]),
    ('{"text": "a", "nbest": 100}', 422, ["nbest", "--max-beam"]),
    ('{"text": "a", "length_penalty": -1}', 422, ["length_penalty", "greater than or equal to 0"]),
    ('{"text": "a", "length_penalty": NaN}', 422, ["length_penalty", "finite"]),
    ('{"text": "a", "temperature": 0}', 422, ["temperature", "greater than 0"]),
    ('{"text": "a", "top_k": -1}', 422, ["top_k"]),
    ('{"text": "a", "seed": -1}', 422, ["seed"]),
    ('{"text": "a", "seed": 1e30}', 422, ["seed"]),
    ('{"text": "a", "alignment": 1}', 422, ["alignment", "boolean"]),
    ('{"text": "a", "sample": true, "nbest": 2}', 422, ["nbest", "sample"]),
    ('{"text": "a", "beam": 5}', 422, ["beam", "Extra inputs"]),
    ('{"text": ["a", "b \\ud800"]}', 422, ["text[1]", "surrogate", "character 2"]),
]


@pytest.mark.parametrize("body,status,words", ERRORS, ids=[f"{s}-{i}" for i, (_, s, _) in enumerate(ERRORS)])
def test_bad_requests_get_a_clear_error(client, body, status, words):
    """Mutation: dropping the max_lines check (or strict=True in the schema) fails these."""
    r = client.post("/translate", content=body.encode(), headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    message = r.json()["error"]
    for word in words:
        assert word in message, message


def test_after_every_bad_request_the_server_still_translates(client):
    for body, _, _ in ERRORS:
        client.post("/translate", content=body.encode(), headers={"content-type": "application/json"})
    assert client.get("/health").json() == {"status": "ok"}
    assert client.post("/translate", json={"text": "the dog"}).status_code == 200


def test_odd_but_valid_input_is_translated(client):
    """Control characters, emoji, an empty list, blank lines: answers, never a 500."""
    for text in ["\x00\x1b[31m the \u200b dog", "🐕 läuft", [], ["", "   "]]:
        r = client.post("/translate", json={"text": text})
        assert r.status_code == 200, (text, r.text)
        assert len(r.json()["translations"]) == (1 if isinstance(text, str) else len(text))


# ------------------------------------------------------------------------------ info, schema, page
def test_info_health_and_openapi(client, ckpt):
    info = client.get("/info").json()
    assert (info["src_lang"], info["tgt_lang"]) == ("de", "en")
    assert info["description"].startswith("pair:de-en|cell:lstm|")
    assert "|ckpt:" in info["description"] and "|version:seq2seq-" in info["description"]
    assert info["model"]["encoder_hidden_size"] == 32 and info["search"]["max_src_tokens"] == 250
    assert info["limits"]["max_lines"] == 10
    assert client.get("/health").json() == {"status": "ok"}
    schema = client.get("/openapi.json").json()
    body = schema["components"]["schemas"]["TranslateRequest"]["properties"]
    assert {"text", "beam_size", "nbest", "length_penalty", "sample", "temperature", "top_k", "seed",
            "alignment"} <= set(body)
    assert "/translate" in schema["paths"] and "/info" in schema["paths"]


def test_page_and_its_assets_are_served_from_the_package(client):
    """Works offline: every asset the page names is served here, and none comes from another host."""
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for asset in ("/static/app.js", "/static/style.css"):
        assert asset in page.text
        r = client.get(asset)
        assert r.status_code == 200 and r.text
        assert "http://" not in r.text and "https://" not in r.text
    assert "http://" not in page.text and "https://" not in page.text
    assert client.get("/static/missing.js").status_code == 404


def test_bad_command_lines_are_usage_errors(ckpt, capsys):
    for argv, words in [(["--checkpoint", str(ckpt), "--max-lines", "0"], "--max-lines must be >= 1"),
                        (["--checkpoint", str(ckpt), "--max-wait-ms", "-1"], "--max-wait-ms")]:
        with pytest.raises(SystemExit) as e:
            serve_cli.main(argv)
        assert e.value.code == 2 and words in capsys.readouterr().err
    assert serve_cli.main(["--checkpoint", str(ckpt.parent / "missing.ckpt")]) == 2
    assert "does not exist" in capsys.readouterr().err


# ------------------------------------------------------------------------------ a real server process
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m seq2seq.cli.serve` on 127.0.0.1 and a free port, waited for until /health answers."""

    def __init__(self, ckpt: Path, *flags: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "seq2seq.cli.serve", "--checkpoint", str(ckpt),
                                      "--port", str(self.port), "--threads", "1", *flags],
                                     env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the server died on start-up:\n{self.proc.stdout.read()}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        self.stop()
        raise AssertionError("the server did not answer /health within 90 s")

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.stdout.read()


def test_disconnected_client_costs_no_search_and_sigterm_finishes_in_flight_requests(ckpt):
    """Real uvicorn: (1) a client that disconnects while queued is never translated and the server
    goes on; (2) SIGTERM: the request in flight gets its answer, new connections are refused, and the
    process exits after a clean shutdown. Mutation: until_disconnected not cancelling the queued work makes search_calls 1."""
    server = Server(ckpt, "--max-wait-ms", "1500")  # a request waits 1.5 s in the queue: time to act
    try:
        body = json.dumps({"text": "the man runs"}).encode()
        with socket.create_connection(("127.0.0.1", server.port)) as s:
            s.sendall(b"POST /translate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            time.sleep(0.3)
        time.sleep(2.0)  # past the queue wait: the request would have been searched by now
        info = httpx.get(server.url + "/info", timeout=10).json()
        assert info["batching"]["search_calls"] == 0

        answer = {}

        def in_flight():
            answer["r"] = httpx.post(server.url + "/translate", json={"text": "the red car"}, timeout=30)

        t = threading.Thread(target=in_flight)
        t.start()
        time.sleep(0.5)  # the request is queued, waiting its 1.5 s
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        with pytest.raises(httpx.ConnectError):
            httpx.get(server.url + "/health", timeout=5)
        t.join(30)
        assert answer["r"].status_code == 200
        assert answer["r"].json()["translations"][0]["translation"]
        # uvicorn re-raises the signal once it has shut down cleanly, so the exit status says SIGTERM
        assert server.proc.wait(30) == -signal.SIGTERM
    finally:
        log = server.stop()
    assert "Finished server process" in log and "Traceback" not in log, log


# ------------------------------------------------------------------------------ the page in a browser
def chromium_or_skip():
    """Playwright driving Debian's chromium (.ci/run installs both); skip, saying why, where absent."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (.ci/run installs it: pip install 'seq2seq[browser]')")
    if not CHROMIUM.is_file() and not shutil.which("chromium"):
        pytest.skip(f"no chromium at {CHROMIUM} (.ci/run installs it: apt-get install -y chromium)")
    return sync_playwright


def test_page_translates_and_draws_the_heatmap_in_chromium(ckpt, tmp_path):
    """Type a sentence, press Translate: the page shows the API's translation, its n-best list and an
    attention heatmap with one row per target piece (+ EOS) and one column per source piece (+ EOS).
    A screenshot is kept as tmp_path/page.png. Mutation: app.js labelling the columns with target pieces fails."""
    sync_playwright = chromium_or_skip()
    sentence = "Ein Hund läuft durch den Schnee."
    server = Server(ckpt)
    try:
        expected = httpx.post(server.url + "/translate", json={"text": [sentence], "alignment": True,
                                                               "beam_size": 3, "nbest": 3}, timeout=30).json()
        t = expected["translations"][0]
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM if CHROMIUM.is_file() else shutil.which("chromium")),
                                        args=["--no-sandbox"])
            try:
                page = browser.new_page(viewport={"width": 1100, "height": 900})
                page.goto(server.url + "/")
                page.wait_for_function("document.getElementById('pair').textContent !== ''")
                page.fill("#source", sentence)
                page.fill("#beam_size", "3")
                page.fill("#nbest", "3")
                page.click("#translate")
                page.wait_for_selector("#results:not([hidden])", timeout=30_000)
                page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
                shown = page.inner_text("#translations li .text")
                rows = page.locator("#heatmap tbody tr").count()
                cols = page.locator("#heatmap tbody tr:first-child td.cell").count()
                headers = page.locator("#heatmap thead th").all_inner_texts()[1:]
                nbest = page.locator("#nbest-list tbody tr").count()
                assert page.inner_text("#pair") == "de → en"
            finally:
                browser.close()
    finally:
        server.stop()
    assert shown == t["translation"] != ""
    assert rows == len(t["tgt_pieces"]) + t["finished"]
    assert cols == len(t["src_pieces"]) + 1
    assert headers == [*t["src_pieces"], "</s>"]
    assert nbest == len(t["nbest"]) == 3
    assert (tmp_path / "page.png").stat().st_size > 5000


def test_load_test_script_reports_both_modes_without_errors(ckpt, tmp_path):
    """scripts/bench/serve.py end to end, shortened: both modes, two levels, a JSON record, exit 0."""
    src = write_lines(tmp_path / "src.txt", synthetic_pairs(20, seed=5)[0])
    out = tmp_path / "serve.json"
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "bench" / "serve.py"), "--checkpoint", str(ckpt),
                           "--input", str(src), "--clients", "1,4", "--duration", "1", "--warmup", "0.5",
                           "--threads", "1", "--json", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = json.loads(out.read_text())["results"]
    assert [(r["mode"], r["clients"]) for r in rows] == [("batched", 1), ("batched", 4), ("single", 1), ("single", 4)]
    assert all(r["errors"] == 0 and r["sentences"] > 0 and r["rss_end_mib"] > 0 for r in rows)
    assert "| 4 |" in proc.stdout and "x |" in proc.stdout  # the table with the batched/single ratio
