"""A checkpoint as an export folder for `seq2seq.deploy.runtime`: encoder.onnx, decoder_step.onnx, the
source and target sentencepiece models and config.json (`seq2seq-export`, cli/export.py, lists them;
docs/deploy.md describes them for porters).

The two graphs are the decoder-step contract of docs/design.md with the state spelled out as named
tensors: "hidden" / "cell" [L, N, H] (rows on axis 1), "feed" [N, O] (rows on axis 0) change every
step and follow their row; "keys" [G, S, K], "values" [G, S, C], "src_pad_mask" [G, S] are per SOURCE
sentence (G groups of N / G consecutive rows, the beams of a sentence) and never change.

The encoder graph is not a trace of `Encoder.forward`: packed sequences export badly, so each
recurrent layer becomes one ONNX RNN / GRU / LSTM operator with `sequence_lens` (ONNX's own masking:
each sequence runs over its length only, the backward direction starts at each sequence's last real
token, final states are taken at each length). Its torch reference (`_onnx_rnn`) is written from the
ONNX operator definitions, so the same module runs in torch (tested against the packed encoder).
The decoder step is a trace of the model's own `Decoder.step` (one time step: nothing is packed)
with its RNN written as matrix products and gates (`_StepCell`), plus a TopK so that beam search
need not sort the whole vocabulary outside the graph. Both use the TorchScript-based exporter
(`dynamo=False`): the dynamo exporter breaks the graph on RNNs or fixes their time axis to the
example's length (known issues of the PyTorch and onnxruntime trackers).

`quantize_int8` (seq2seq-export --quantize int8) then applies onnxruntime's dynamic quantization (int8
weights, activations quantized per call) to the matrix products, LSTM operators and embedding tables.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path

from seq2seq.checkpoint.format import special_ids
from seq2seq.checkpoint.loading import load_for_translation
from seq2seq.config import SearchConfig
from seq2seq.deploy.onnx_graphs import OPSET, ExportError, export_graphs, graph_names, state_layout

# onnx and onnxruntime (the `onnx` extra) are imported where they are used, after require_onnx() has
# named the extra if they are missing.

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
EXTRA_HINT = 'pip install -e ".[onnx]"'  # the extra that brings onnx and onnxruntime


def require_onnx() -> None:
    """Raise an ExportError naming the extra to install when onnx / onnxruntime are missing."""
    missing = []
    for name in ("onnx", "onnxruntime"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ExportError(f"{' and '.join(missing)} not installed; install the extra: {EXTRA_HINT}")


# ------------------------------------------------------------------------------ int8 and the folder
def _gemm_to_matmul(path: Path) -> None:
    """Rewrite Gemm nodes as MatMul + Add: onnxruntime's dynamic quantizer handles MatMul only, and
    the exporter writes the step's linear layers on [N, X] inputs (the output layer too) as Gemm."""
    import onnx
    from onnx import helper, numpy_helper

    graph_model = onnx.load(str(path))
    graph = graph_model.graph
    inits = {t.name: t for t in graph.initializer}
    nodes = []
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        weight = inits.get(node.input[1]) if node.op_type == "Gemm" and len(node.input) > 1 else None
        if (weight is None or attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0
                or attrs.get("beta", 1.0) != 1.0):
            nodes.append(node)
            continue
        w = numpy_helper.to_array(weight)
        if attrs.get("transB", 0):
            w = w.T
        name = f"{node.input[1]}_matmul_{len(nodes)}"
        graph.initializer.append(numpy_helper.from_array(w.copy(), name))
        product = node.output[0] + ("_product" if len(node.input) > 2 else "")
        nodes.append(helper.make_node("MatMul", [node.input[0], name], [product]))
        if len(node.input) > 2:
            nodes.append(helper.make_node("Add", [product, node.input[2]], [node.output[0]]))
    del graph.node[:]
    graph.node.extend(nodes)
    used = {i for n in graph.node for i in n.input}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    onnx.save(graph_model, str(path))


def quantize_int8(folder: Path) -> None:
    """onnxruntime dynamic quantization of both graphs in place: int8 weights for MatMul, LSTM and the
    embedding tables (Gather); GRU and plain RNN operators have no int8 kernel in onnxruntime and
    stay float32."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    # the quantizer logs, on the root logger, advice to run its shape-inference pre-processing first:
    # that serves static quantization; the dynamic kind quantizes these graphs fully without it
    root.setLevel(logging.ERROR)
    try:
        for name in ("encoder.onnx", "decoder_step.onnx"):
            path = folder / name
            _gemm_to_matmul(path)
            quantized = folder / f"{name}.int8"
            quantize_dynamic(str(path), str(quantized), weight_type=QuantType.QInt8,
                             op_types_to_quantize=["MatMul", "LSTM", "Gather"])
            quantized.replace(path)
    finally:
        root.setLevel(level)


def export(checkpoint: str | Path, output_dir: str | Path, quantize: str | None = None) -> Path:
    """Write the export folder for `checkpoint` (see the module doc); returns its path.

    The folder is built beside `output_dir` and renamed into place when complete. An existing
    `output_dir` is replaced only when it is empty or an earlier export folder (holds config.json).
    """
    require_onnx()
    if quantize not in (None, "int8"):
        raise ExportError(f"--quantize {quantize!r} is not supported; valid options: int8")
    out = Path(output_dir)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "config.json").is_file())):
        raise ExportError(f"--output-dir {out} exists and is not an export folder; choose a new folder")
    model, tokenizer, search_cfg, config = load_for_translation(checkpoint, "cpu")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        export_graphs(model, tmp)
        if quantize == "int8":
            quantize_int8(tmp)
        spm = tokenizer.state_dict()
        (tmp / "source.model").write_bytes(spm["src_model"])
        (tmp / "target.model").write_bytes(spm["tgt_model"])
        data = config.get("data", {})
        search = {k: getattr(search_cfg, k) for k in SearchConfig.__dataclass_fields__}
        meta = {
            "format_version": FORMAT_VERSION,
            "source_lang": data.get("src_lang"), "target_lang": data.get("tgt_lang"),
            "special_ids": special_ids(),
            "vocab_size": {"source": tokenizer.src_vocab_size, "target": tokenizer.tgt_vocab_size},
            "model": dict(config["model"]),
            "search": search,
            "quantization": quantize,
            "sentencepiece": {"source": "source.model", "target": "target.model", "joint": tokenizer.joint},
            "graphs": {"encoder": "encoder.onnx", "decoder_step": "decoder_step.onnx", "opset": OPSET,
                       **graph_names(model)},
            "state": state_layout(model),
        }
        (tmp / "config.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
