"""seq2seq-export: every cell x attention (x input feeding, x bidirectional) exports, and onnxruntime
reproduces the torch encoder (init_state) and decoder step within 1e-4 on a padded random batch."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from seq2seq.config import ModelConfig
from seq2seq.data.batching import collate_source
from seq2seq.model import Seq2Seq

ort = pytest.importorskip("onnxruntime", reason='onnxruntime is missing: pip install -e ".[onnx]"')
pytest.importorskip("onnx", reason='onnx is missing: pip install -e ".[onnx]"')

from seq2seq.deploy.onnx_graphs import ExportEncoder, export_graphs, graph_names, state_layout  # noqa: E402

CELLS = ("rnn_tanh", "rnn_relu", "gru", "lstm")
DESIGNS = [("bahdanau", False), ("bahdanau", True), ("luong_dot", False), ("luong_dot", True),
           ("luong_general", False), ("luong_general", True), ("none", False)]
# Sentences of different lengths: padding in every position but the first column.
SOURCES = [[5, 6, 7, 8, 9, 10, 11], [12], [4, 4, 5], [7, 8, 13, 14], [20, 21]]


def tiny_model(cell: str, attention: str, input_feed: bool, bidirectional: bool = True,
               bridge: bool = True) -> Seq2Seq:
    torch.manual_seed(0)
    model = Seq2Seq(ModelConfig(cell=cell, embedding_size=8, encoder_hidden_size=6, decoder_hidden_size=10,
                                encoder_layers=2, decoder_layers=2, bidirectional=bidirectional, attention=attention,
                                attention_size=7, input_feed=input_feed, bridge=bridge, dropout=0.1, rnn_dropout=0.1,
                                tie_embeddings=False),
                    src_vocab_size=23, tgt_vocab_size=19, pad_id=0, bos_id=2, eos_id=3)
    with torch.no_grad():  # the output bias starts at zero: make it count
        model.decoder.output.proj.bias.normal_()
    return model.eval()


def session(path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def check_parity(model: Seq2Seq, folder) -> None:
    """onnxruntime vs torch: the encoder's state, then one grouped step (3 rows per sentence)."""
    export_graphs(model, folder)
    names = graph_names(model)
    layout = state_layout(model)
    src, lengths, mask = collate_source(SOURCES)
    with torch.no_grad():
        state = model.init_state(src, lengths, mask)
    expected = [state.pad_mask if n == "src_pad_mask" else getattr(state, n) for n in names["encoder_outputs"]]
    got = session(folder / "encoder.onnx").run(None, {"src": src.numpy(), "src_lengths": lengths.numpy()})
    for name, g, e in zip(names["encoder_outputs"], got, expected):
        assert g.shape == tuple(e.shape), name
        np.testing.assert_allclose(g.astype(np.float32), e.numpy().astype(np.float32), atol=1e-4, err_msg=name)

    rows = len(SOURCES) * 3
    state = model.reorder_state(state, torch.arange(len(SOURCES)).repeat_interleave(3), sources=None)
    prev = torch.randint(4, 19, (rows,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        log_probs, new_state, attention = model.step(prev, state)
    feeds = {"prev_tokens": prev.numpy(), "k": np.array(4, dtype=np.int64)}
    for spec, value in zip(layout, got):
        feeds[spec["name"]] = np.repeat(value, 3, axis=spec["axis"]) if spec["per"] == "row" else value
    outputs = dict(zip(names["step_outputs"], session(folder / "decoder_step.onnx").run(None, feeds)))
    np.testing.assert_allclose(outputs["log_probs"], log_probs.numpy(), atol=1e-4)
    top = log_probs.topk(4, dim=1)
    np.testing.assert_allclose(outputs["topk_log_probs"], top.values.numpy(), atol=1e-4)
    np.testing.assert_array_equal(outputs["topk_ids"], top.indices.numpy())
    assert (attention is None) == ("attention" not in outputs)
    if attention is not None:
        np.testing.assert_allclose(outputs["attention"], attention.numpy(), atol=1e-4)
    for spec in layout:
        if spec["per"] == "row":
            np.testing.assert_allclose(outputs[f"new_{spec['name']}"], getattr(new_state, spec["name"]).numpy(),
                                       atol=1e-4, err_msg=spec["name"])


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("attention,input_feed", DESIGNS)
def test_exported_graphs_reproduce_torch(cell, attention, input_feed, tmp_path):
    """Mutations caught: the GRU gate order of `_GATE_ORDER` left in torch's order; `sequence_lens`
    dropped from the ONNX RNN operator (padding then runs through the recurrence). Bidirectional
    alternates with input feeding to keep the matrix at 28 exports; the unidirectional and
    bridge-free forms are checked below."""
    check_parity(tiny_model(cell, attention, input_feed, bidirectional=not input_feed), tmp_path)


@pytest.mark.parametrize("cell,attention,bidirectional,bridge", [
    ("lstm", "luong_general", False, True), ("gru", "bahdanau", True, False), ("lstm", "luong_dot", True, False)])
def test_unidirectional_and_bridge_free_encoders(cell, attention, bidirectional, bridge, tmp_path):
    check_parity(tiny_model(cell, attention, False, bidirectional, bridge), tmp_path)


def test_masked_encoder_in_torch_equals_the_packed_encoder():
    """The export wrapper's torch reference of the ONNX operators (`_onnx_rnn`) gives the packed
    encoder's numbers, for every cell: the weight conversion is right before any graph is built."""
    src, lengths, mask = collate_source(SOURCES)
    for cell in CELLS:
        model = tiny_model(cell, "luong_general", False)
        with torch.no_grad():
            state = model.init_state(src, lengths, mask)
            got = ExportEncoder(model)(src, lengths)
        for name, value in zip(graph_names(model)["encoder_outputs"], got):
            expected = state.pad_mask if name == "src_pad_mask" else getattr(state, name)
            torch.testing.assert_close(value, expected, atol=1e-5, rtol=0, msg=f"{cell} {name}")


def test_config_json_describes_the_graphs(tmp_path):
    model = tiny_model("lstm", "bahdanau", True)
    export_graphs(model, tmp_path)
    names = graph_names(model)
    assert [s["name"] for s in state_layout(model)] == ["hidden", "cell", "feed", "keys", "values", "src_pad_mask"]
    assert names["step_outputs"] == ["log_probs", "topk_log_probs", "topk_ids", "attention", "new_hidden",
                                     "new_cell", "new_feed"]
    for graph, inputs, outputs in (("encoder.onnx", "encoder_inputs", "encoder_outputs"),
                                   ("decoder_step.onnx", "step_inputs", "step_outputs")):
        s = session(tmp_path / graph)
        assert [i.name for i in s.get_inputs()] == names[inputs]
        assert [o.name for o in s.get_outputs()] == names[outputs]
    json.dumps(state_layout(model))  # plain data
