"""The HTTP app of `seq2seq-serve`: FastAPI around a loaded model (`Engine`), with dynamic batching and
a web page. Its endpoints, answers and errors are listed in cli/serve.py (the command's --help) and
docs/serving.md; the request and answer schema is serving/schema.py.

Every line goes through the same `Translator` and detokenizer as `seq2seq-translate`, cleaned the same
way (a string is one line: line breaks inside it become spaces), so a line translated here equals the
line translated by the script; an answer holds the keys and values of `seq2seq-translate --format jsonl`.
Requests with equal search settings that arrive together share one search call (serving/dynamic_batcher.py);
sampling requests never share one, so a seed gives the samples the script gives for the same lines.
"""

import asyncio
import hashlib
import itertools
import json
import logging
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from seq2seq import __version__
from seq2seq.decoding.output import alignment, normalized
from seq2seq.serving.dynamic_batcher import DynamicBatcher

# torch (with the checkpoint and model code) and FastAPI (the optional `serve` extra) are imported where
# they are used, not here: seq2seq-serve's `--help` and usage errors are answered without them
# (tests/test_startup.py), and cli/serve.py names the extra when it is missing.
if TYPE_CHECKING:
    import torch

    from seq2seq.decoding.translator import Sampling, Translation, Translator

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"


# ---------------------------------------------------------------------------------------------- engine
@dataclass(frozen=True)
class Settings:
    """A request's search settings. Requests with equal settings may share one search call."""

    beam_size: int
    nbest: int
    length_penalty: float
    alignment: bool
    sampling: "Sampling | None" = None
    request: int = 0  # sampling requests get a unique number: never merged, so seeds reproduce


@dataclass
class Limits:
    max_lines: int = 100  # lines per request
    max_chars: int = 10_000  # characters per request, all lines together
    max_beam: int = 16  # largest beam_size / nbest a request may ask for

    @property
    def max_body_bytes(self) -> int:
        """A JSON body that can hold max_chars characters (escaped) and the settings, with room to spare."""
        return 8 * self.max_chars + 64 * 1024


class Engine:
    """The loaded model and tokenizer, and the one way the server translates: `Translator.translate`."""

    def __init__(self, model, tokenizer, search_cfg, config: dict, device: "torch.device", checkpoint: str = ""):
        self.model, self.tokenizer, self.search_cfg, self.config = model, tokenizer, search_cfg, config
        self.device = device
        self.checkpoint = checkpoint
        self._digest = ""

    @classmethod
    def load(cls, path: str, device: str = "auto") -> "Engine":
        from seq2seq.checkpoint.loading import load_device, load_for_translation

        dev = load_device(device)
        model, tokenizer, search_cfg, config = load_for_translation(path, dev)
        return cls(model, tokenizer, search_cfg, config, dev, str(path))

    def translator(self, s: Settings) -> "Translator":
        """The Translator `seq2seq-translate` would build for these settings (a beam widened to nbest)."""
        from seq2seq.decoding.translator import Translator

        cfg = replace(self.search_cfg, beam_size=max(s.beam_size, s.nbest), length_penalty=s.length_penalty)
        return Translator(self.model, self.tokenizer, cfg, device=self.device, sampling=s.sampling)

    def translate(self, s: Settings, lines: list[str]) -> "list[Translation]":
        return self.translator(s).translate(lines, nbest=s.nbest, with_attention=s.alignment)

    def count_tokens(self, lines: Sequence[str]) -> int:
        """Source tokens these lines will take in a batch (as Translator truncates and pads them)."""
        limit = self.search_cfg.max_src_tokens
        return sum(min(len(ids) + 1, limit) for ids in self.tokenizer.encode_src(list(lines)))

    def describe(self) -> str:
        """A sacrebleu-style one-line description: `key:value|...`, enough to tell two models apart."""
        m, data = self.config.get("model", {}), self.config.get("data", {})
        params = sum(p.numel() for p in self.model.parameters())
        if not self._digest and self.checkpoint:
            h = hashlib.sha256()
            with open(self.checkpoint, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            self._digest = h.hexdigest()[:12]
        fields = {
            "pair": f"{data.get('src_lang', '?')}-{data.get('tgt_lang', '?')}",
            "cell": m.get("cell"),
            "enc": f"{m.get('encoder_layers')}x{m.get('encoder_hidden_size')}"
                   + ("bi" if m.get("bidirectional") else ""),
            "dec": f"{m.get('decoder_layers')}x{m.get('decoder_hidden_size')}",
            "att": m.get("attention"),
            "vocab": f"{self.tokenizer.src_vocab_size}+{self.tokenizer.tgt_vocab_size}",
            "params": f"{params / 1e6:.2f}M",
            "beam": self.search_cfg.beam_size,
            "lp": self.search_cfg.length_penalty,
            "ckpt": self._digest or "none",
            "version": f"seq2seq-{__version__}",
        }
        return "|".join(f"{k}:{v}" for k, v in fields.items())


def translation_json(t: "Translation", s: Settings, engine: Engine) -> dict[str, Any]:
    """One line's answer: the keys and values of `seq2seq-translate --format jsonl` (minus "line")."""
    obj: dict[str, Any] = {
        "translation": t.text, "score": t.score,
        "normalized_score": normalized(t.score, t.length, s.length_penalty),
        "finished": t.finished,
        "nbest": [{"translation": c.text, "score": c.score, "normalized_score": c.normalized_score} for c in t.nbest],
    }
    if s.alignment:
        obj["alignment"] = alignment(t)
        obj["src_pieces"] = engine.tokenizer.src_pieces(t.src_tokens)
        obj["tgt_pieces"] = engine.tokenizer.tgt_pieces(t.tokens)
        rows, cols = len(t.tokens) + int(t.finished), len(t.src_tokens) + 1
        att = t.attention[:rows, :cols] if t.attention is not None else None
        obj["attention"] = [[round(float(x), 4) for x in row] for row in att.tolist()] if att is not None else None
    return obj


# ---------------------------------------------------------------------------------------------- the app
async def until_disconnected(request, work):
    """Await `work`, or cancel it (-> None) if the client disconnects first: a queued request is then
    never translated, and one already being translated costs no more than finishing its batch."""
    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    task, watch = asyncio.ensure_future(work), asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # this handler was cancelled itself
        task.cancel()
        raise
    finally:
        watch.cancel()
    if not task.done():
        task.cancel()
        return None
    return task.result()


def create_app(engine: Engine, limits: Limits | None = None, batch_tokens: int | None = None,
               max_wait_ms: float = 5.0, batching: bool = True):
    """The FastAPI application around a loaded `Engine`.

    batch_tokens: source tokens per shared search call (default: the checkpoint's search.batch_tokens);
    max_wait_ms: how long the oldest queued request waits for companions; batching=False: one request
    per search call.
    """
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse
    from fastapi.staticfiles import StaticFiles

    from seq2seq.decoding.translator import Sampling, one_line
    from seq2seq.serving import schema

    limits = limits or Limits()
    budget = batch_tokens or engine.search_cfg.batch_tokens
    counter = itertools.count(1)
    state: dict[str, DynamicBatcher] = {}

    @asynccontextmanager
    async def lifespan(app):
        batcher = DynamicBatcher(engine.translate, max_tokens=budget, max_wait_s=max_wait_ms / 1000.0,
                                 max_requests=0 if batching else 1)
        batcher.start()
        state["batcher"] = batcher
        log.info("ready: %s", engine.describe())
        yield
        await batcher.stop()

    app = FastAPI(title="seq2seq", version=__version__, lifespan=lifespan,
                  description="Recurrent neural machine translation. See docs/serving.md.")

    def error(status: int, message: str, detail: Any = None) -> JSONResponse:
        return JSONResponse({"error": message, "detail": detail if detail is not None else message},
                            status_code=status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        return error(422, schema.describe_errors(errors), schema.jsonable_errors(errors))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):  # a bug, never the user's input: say so, stay up
        log.exception("internal error on %s %s", request.method, request.url.path)
        return error(500, f"internal error ({type(exc).__name__}); the server log has the details")

    @app.post("/translate", response_model=schema.TranslateResponse, response_model_exclude_none=True)
    async def translate(body: schema.TranslateRequest, request: Request):
        lines = [body.text] if isinstance(body.text, str) else list(body.text)
        if len(lines) > limits.max_lines:
            raise HTTPException(413, f"{len(lines)} lines is over the limit of {limits.max_lines} lines "
                                     "per request (--max-lines)")
        chars = sum(len(line) for line in lines)
        if chars > limits.max_chars:
            raise HTTPException(413, f"{chars} characters is over the limit of {limits.max_chars} characters "
                                     "per request (--max-chars)")
        for name in ("beam_size", "nbest"):
            value = getattr(body, name)
            if value is not None and value > limits.max_beam:
                raise RequestValidationError([{"type": "less_than_equal", "loc": ("body", name), "input": value,
                                               "msg": f"Input should be less than or equal to {limits.max_beam} "
                                                      "(the server's --max-beam)"}])
        for i, line in enumerate(lines):
            try:
                line.encode("utf-8")
            except UnicodeEncodeError as e:  # JSON can escape a lone surrogate ("\ud800"); text cannot hold one
                loc = ("body", "text") if isinstance(body.text, str) else ("body", "text", i)
                raise RequestValidationError([{"type": "string_unicode", "loc": loc, "input": None,
                                               "msg": f"not valid Unicode text: a lone surrogate "
                                                      f"{line[e.start]!a} at character {e.start}"}]) from None
        if body.sample and body.nbest > 1:
            raise RequestValidationError([{"type": "value_error", "loc": ("body", "nbest"), "input": body.nbest,
                                           "msg": "nbest > 1 comes from beam search; it cannot be combined "
                                                  "with sample=true"}])
        lines = [one_line(line) for line in lines]  # what read_lines does to a file's lines
        settings = Settings(
            beam_size=body.beam_size if body.beam_size is not None else engine.search_cfg.beam_size,
            nbest=body.nbest,
            length_penalty=(body.length_penalty if body.length_penalty is not None
                            else engine.search_cfg.length_penalty),
            alignment=body.alignment,
            sampling=Sampling(body.temperature, body.top_k, body.seed) if body.sample else None,
            request=next(counter) if body.sample else 0,
        )
        results = await until_disconnected(
            request, state["batcher"].submit(settings, lines, engine.count_tokens(lines)))
        if results is None:  # the client went away: its lines were dropped if not yet started
            return JSONResponse({"error": "client disconnected"}, status_code=499)
        return {"translations": [translation_json(t, settings, engine) for t in results]}

    @app.get("/health", response_model=schema.Health)
    async def health():
        return {"status": "ok"}

    @app.get("/info", response_model=schema.Info)
    async def info():
        data = engine.config.get("data", {})
        batcher = state.get("batcher")
        return {
            "src_lang": data.get("src_lang"), "tgt_lang": data.get("tgt_lang"),
            "description": engine.describe(),
            "model": engine.config.get("model", {}),
            "search": asdict(engine.search_cfg),
            "device": str(engine.device),
            "batching": {"enabled": batching, "batch_tokens": budget, "max_wait_ms": max_wait_ms,
                         "search_calls": batcher.calls if batcher else 0},
            "limits": {"max_lines": limits.max_lines, "max_chars": limits.max_chars,
                       "max_beam": limits.max_beam, "max_body_bytes": limits.max_body_bytes},
        }

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(BodyLimit, limits=limits)
    return app


class BodyLimit:
    """ASGI middleware: 413 for a body whose Content-Length is over the limit, before it is read.

    (Plain ASGI rather than FastAPI's @app.middleware("http"), which wraps `receive` and would hide
    client disconnects from the handlers.)"""

    def __init__(self, app, limits: Limits):
        self.app, self.limits = app, limits

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            size = dict(scope.get("headers", [])).get(b"content-length", b"").decode("latin-1")
            if size.isdigit() and int(size) > self.limits.max_body_bytes:
                message = (f"request body of {size} bytes is over the limit of {self.limits.max_body_bytes} "
                           f"bytes (8 bytes per --max-chars={self.limits.max_chars} character, plus 64 KiB)")
                body = json.dumps({"error": message, "detail": message}).encode()
                await send({"type": "http.response.start", "status": 413,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(body)).encode()),
                                        (b"connection", b"close")]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)
