"""`seq2seq-export`: a checkpoint as an export folder for the torch-free runtime (`seq2seq.deploy.runtime`,
`seq2seq-translate --backend onnxruntime --model DIR`).

    seq2seq-export --checkpoint best.ckpt --output-dir model-onnx [--quantize int8]

The export folder (docs/deploy.md describes it for porters):

    encoder.onnx         src [B, S] int64, src_lengths [B] int64 -> the state before the first step
    decoder_step.onnx    prev_tokens [N] int64, k [] int64 + state -> log_probs [N, V], each row's k best
                         (log-probs and ids [N, k]), attention [N, S], the new per-row state
    source.model, target.model   sentencepiece models (the same bytes twice for a joint vocabulary)
    config.json          special ids, language pair, model settings, search defaults, the state layout

The folder is built beside --output-dir and renamed into place when complete; an existing --output-dir
is replaced only when it is empty or an earlier export folder. `--quantize int8` applies onnxruntime's
dynamic quantization (int8 weights, activations quantized per call) to the matrix products, LSTM
operators and embedding tables. Needs the onnx extra: pip install -e ".[onnx]". Exit status: 0, or 2
with one `error: ...` line.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    p = argparse.ArgumentParser(prog="seq2seq-export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a .ckpt written by seq2seq-train (or seq2seq-average)")
    p.add_argument("--output-dir", required=True, help="the export folder to write")
    p.add_argument("--quantize", choices=("int8",), help="onnxruntime dynamic int8 quantization")
    args = p.parse_args(argv)
    # torch and the model code are imported once the command line is parsed: `--help` and usage errors are
    # answered without them (tests/test_startup.py).
    from seq2seq.checkpoint.format import CheckpointError
    from seq2seq.deploy.export import export
    from seq2seq.deploy.onnx_graphs import ExportError

    try:
        out = export(args.checkpoint, args.output_dir, args.quantize)
    except (ExportError, CheckpointError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}: " + ", ".join(sorted(p.name for p in out.iterdir())), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
