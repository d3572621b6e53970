"""`seq2seq-serve`: translate over HTTP (FastAPI + uvicorn), with dynamic batching and a web page.

    seq2seq-serve --checkpoint best.ckpt [--host 127.0.0.1] [--port 8080]

Endpoints
  POST /translate  {"text": "a sentence"} or {"text": ["one", "line", "each"]}, plus optional search
                   settings: beam_size, nbest, length_penalty, sample (with temperature, top_k, seed),
                   alignment. Answers {"translations": [...]}, one object per input line, in order,
                   with the same keys and values as `seq2seq-translate --format jsonl`: translation,
                   score, normalized_score, finished, nbest [{translation, score}] (always, best first),
                   and with alignment=true: alignment, src_pieces, tgt_pieces and attention
                   (rows: target pieces plus EOS when finished; columns: source pieces plus EOS).
  GET /health      {"status": "ok"} once the model is loaded.
  GET /info        language pair, model and search settings, a sacrebleu-style description of the
                   model, the batching settings and request limits.
  GET /            a page to try the model: n-best list and an attention heatmap.
  GET /docs, /openapi.json  the schema FastAPI generates.

Every line goes through the same `Translator` and detokenizer as `seq2seq-translate`, cleaned the same
way (a string is one line: line breaks inside it become spaces), so a line translated here equals the
line translated by the script. Requests with equal search settings that arrive together share one
search call (serving/dynamic_batcher.py); sampling requests never share one, so a seed gives the samples the
script gives for the same lines. Errors: 413 for a request over --max-lines or --max-chars (or a body
too large for them), 422 for malformed JSON, an unknown field, a wrong type or a setting out of range,
each naming the field or limit at fault. SIGTERM (or Ctrl-C) lets requests in flight finish and
refuses new connections. Docs: docs/serving.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from seq2seq.serving.app import Engine, Limits, create_app

# torch, uvicorn and FastAPI (the `serve` extra) are imported in main, once the command line is parsed:
# `--help` and usage errors are answered without them (tests/test_startup.py), and a missing extra is
# named with the command that installs it.

log = logging.getLogger(__name__)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="seq2seq-serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a .ckpt written by seq2seq-train (or seq2seq-average)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--batch-tokens", type=int,
                   help="source tokens per shared search call (default: the checkpoint's search.batch_tokens)")
    p.add_argument("--max-wait-ms", type=float, default=5.0,
                   help="how long a request waits for others to share its search call")
    p.add_argument("--no-batching", action="store_true", help="one request per search call (a baseline)")
    p.add_argument("--max-lines", type=int, default=Limits.max_lines, help="lines per request (413 above)")
    p.add_argument("--max-chars", type=int, default=Limits.max_chars, help="characters per request (413 above)")
    p.add_argument("--max-beam", type=int, default=Limits.max_beam, help="largest beam_size/nbest (422 above)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--graceful-timeout", type=float, default=30.0,
                   help="seconds requests in flight get to finish after SIGTERM")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info")
    args = p.parse_args(argv)
    for name in ("port", "max_lines", "max_chars", "max_beam", "threads", "batch_tokens"):
        value = getattr(args, name)
        if value is not None and value < (0 if name == "port" else 1):
            p.error(f"--{name.replace('_', '-')} must be >= {0 if name == 'port' else 1}, got {value}")
    if not 0 <= args.max_wait_ms <= 10_000:
        p.error(f"--max-wait-ms must be in [0, 10000], got {args.max_wait_ms}")
    if args.graceful_timeout < 0:
        p.error(f"--graceful-timeout must be >= 0, got {args.graceful_timeout}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s: %(message)s")
    try:
        import uvicorn
        import fastapi  # noqa: F401  (fail here, with the fix, rather than inside create_app)
    except ImportError as e:
        print(f"error: seq2seq-serve needs the serve extra ({e.name} is missing): pip install 'seq2seq[serve]'",
              file=sys.stderr)
        return 2
    import torch

    from seq2seq.checkpoint.format import CheckpointError

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        engine = Engine.load(args.checkpoint, args.device)
    except (CheckpointError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    app = create_app(engine, Limits(args.max_lines, args.max_chars, args.max_beam), args.batch_tokens,
                     args.max_wait_ms, batching=not args.no_batching)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("binding %s: the server is reachable from other machines (it has no authentication)",
                    args.host)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                            timeout_graceful_shutdown=args.graceful_timeout)
    uvicorn.Server(config).run()  # handles SIGTERM/SIGINT: stop accepting, finish in-flight requests
    return 0


if __name__ == "__main__":
    sys.exit(main())
