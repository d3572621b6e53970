"""The torch side of `seq2seq-export`: a `Seq2Seq` as an ONNX encoder graph and an ONNX decoder-step graph.

See `deploy/export.py` and docs/deploy.md (the export folder) for what the graphs hold. The
encoder is not a trace of `Encoder.forward`: packed sequences export badly, so each recurrent layer
becomes one ONNX RNN / GRU / LSTM operator with `sequence_lens`, and its torch reference (`_onnx_rnn`)
is written from the ONNX operator definitions. The decoder step is a trace of `Decoder.step` with the
RNN written as matrix products and gates (`_StepCell`), plus a TopK. Both use the TorchScript-based
exporter (`dynamo=False`).
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from seq2seq.model import Seq2Seq
from seq2seq.model.decoder import DecoderState

OPSET = 17


class ExportError(ValueError):
    """A model or folder that cannot be exported; the message says what is unsupported."""


# GRU torch (r, z, n) -> ONNX (z, r, h). One gate for plain RNNs.
_GATE_ORDER = {"lstm": (0, 3, 1, 2), "gru": (1, 0, 2), "rnn_tanh": (0,), "rnn_relu": (0,)}
_ONNX_OP = {"lstm": "LSTM", "gru": "GRU", "rnn_tanh": "RNN", "rnn_relu": "RNN"}


# ------------------------------------------------------------------------------ encoder on masks
def _onnx_rnn(kind: str, x: Tensor, lengths: Tensor, w: Tensor, r: Tensor, b: Tensor,
              hidden_size: int) -> tuple[Tensor, Tensor, Tensor | None]:
    """The ONNX RNN/GRU/LSTM operator with `sequence_lens`, in torch (a time loop; export time only).

    x [S, B, I], lengths [B], w [D, G*H, I], r [D, G*H, H], b [D, 2*G*H] in ONNX gate order.
    Returns y [S, D, B, H] (zeros beyond each length), y_h [D, B, H] and y_c [D, B, H] (LSTM) or None:
    direction 1 runs each sequence backwards from its last real token.
    """
    steps, batch = x.size(0), x.size(1)
    gates = len(_GATE_ORDER[kind])
    ys, hs, cs = [], [], []
    for d in range(w.size(0)):
        h = x.new_zeros(batch, hidden_size)
        c = x.new_zeros(batch, hidden_size)
        y = [x.new_zeros(batch, hidden_size) for _ in range(steps)]
        wb, rb = b[d, : gates * hidden_size], b[d, gates * hidden_size:]
        order = range(steps - 1, -1, -1) if d == 1 else range(steps)
        for t in order:
            # the backward direction visits position t once it is inside a sequence: padding is skipped
            live = (t < lengths).unsqueeze(1)  # [B, 1]
            xw = x[t] @ w[d].T + wb  # [B, G*H]
            hr = h @ r[d].T + rb  # [B, G*H]
            if kind == "lstm":
                i, o, f, g = (xw + hr).chunk(4, dim=1)
                c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h_new = torch.sigmoid(o) * torch.tanh(c_new)
                c = torch.where(live, c_new, c)
            elif kind == "gru":
                xz, xr, xh = xw.chunk(3, dim=1)
                hz, hr_, hh = hr.chunk(3, dim=1)
                z, rr = torch.sigmoid(xz + hz), torch.sigmoid(xr + hr_)
                h_new = (1 - z) * torch.tanh(xh + rr * hh) + z * h  # linear_before_reset=1
            else:
                pre = xw + hr
                h_new = torch.relu(pre) if kind == "rnn_relu" else torch.tanh(pre)
            h = torch.where(live, h_new, h)
            y[t] = torch.where(live, h_new, torch.zeros_like(h_new))
        ys.append(torch.stack(y))  # [S, B, H]
        hs.append(h)
        cs.append(c)
    y_c = torch.stack(cs) if kind == "lstm" else None
    return torch.stack(ys, dim=1), torch.stack(hs), y_c


class _RNNLayer(torch.autograd.Function):
    """One recurrent layer: `_onnx_rnn` in torch, the ONNX operator in an exported graph."""

    @staticmethod
    def forward(ctx, x, lengths, w, r, b, kind: str, hidden_size: int):  # noqa: D102
        y, h, c = _onnx_rnn(kind, x, lengths, w, r, b, hidden_size)
        return y, h, (c if c is not None else torch.zeros_like(h))

    @staticmethod
    def symbolic(g, x, lengths, w, r, b, kind: str, hidden_size: int):  # noqa: D102
        seq_lens = g.op("Cast", lengths, to_i=6)  # int32, as the operator wants
        direction = "bidirectional" if w.type().sizes()[0] == 2 else "forward"
        attrs = dict(hidden_size_i=hidden_size, direction_s=direction)
        if kind == "gru":
            attrs["linear_before_reset_i"] = 1  # PyTorch applies the reset gate after the product
        if kind in ("rnn_tanh", "rnn_relu"):
            attrs["activations_s"] = ["Relu" if kind == "rnn_relu" else "Tanh"] * (2 if direction == "bidirectional" else 1)
        inputs = [x, w, r, b, seq_lens]
        if kind == "lstm":
            y, h, c = g.op("LSTM", *inputs, outputs=3, **attrs)
            return y, h, c
        y, h = g.op(_ONNX_OP[kind], *inputs, outputs=2, **attrs)
        return y, h, h  # the third output is unused for non-LSTM cells


def _cell_kind(rnn: nn.RNNBase) -> str:
    if isinstance(rnn, nn.LSTM):
        return "lstm"
    if isinstance(rnn, nn.GRU):
        return "gru"
    if isinstance(rnn, nn.RNN):
        return "rnn_relu" if rnn.nonlinearity == "relu" else "rnn_tanh"
    raise ExportError(f"cannot export a {type(rnn).__name__} encoder: supported cells are "
                      "rnn_tanh, rnn_relu, gru, lstm")


def _onnx_weights(rnn: nn.RNNBase, layer: int, kind: str) -> tuple[Tensor, Tensor, Tensor]:
    """Layer `layer` of a torch RNN as ONNX W [D, G*H, I], R [D, G*H, H], B [D, 2*G*H]."""
    order = _GATE_ORDER[kind]

    def reorder(t: Tensor) -> Tensor:
        return torch.cat([t.chunk(len(order), dim=0)[i] for i in order], dim=0)

    ws, rs, bs = [], [], []
    for suffix in ([""] + (["_reverse"] if rnn.bidirectional else [])):
        name = f"l{layer}{suffix}"
        w = getattr(rnn, f"weight_ih_{name}")
        r = getattr(rnn, f"weight_hh_{name}")
        if rnn.bias:
            wb, rb = getattr(rnn, f"bias_ih_{name}"), getattr(rnn, f"bias_hh_{name}")
        else:
            wb, rb = w.new_zeros(w.size(0)), w.new_zeros(w.size(0))
        ws.append(reorder(w))
        rs.append(reorder(r))
        bs.append(torch.cat([reorder(wb), reorder(rb)]))
    return torch.stack(ws).detach(), torch.stack(rs).detach(), torch.stack(bs).detach()


def state_layout(model: Seq2Seq) -> list[dict]:
    """The named state tensors of the step contract, in graph order, with where their rows are.

    per "row": one row per search row (follows its row when beams are reordered); per "source":
    one row per source sentence, shared by the R consecutive rows of its group (never changes).
    """
    dec = model.decoder
    layout = [{"name": "hidden", "per": "row", "axis": 1, "shape": "[L, N, H]"}]
    if dec.is_lstm:
        layout.append({"name": "cell", "per": "row", "axis": 1, "shape": "[L, N, H]"})
    if dec.input_feed:
        layout.append({"name": "feed", "per": "row", "axis": 0, "shape": "[N, O]"})
    if dec.attention is not None:
        layout += [{"name": "keys", "per": "source", "axis": 0, "shape": "[G, S, K]"},
                   {"name": "values", "per": "source", "axis": 0, "shape": "[G, S, C]"},
                   {"name": "src_pad_mask", "per": "source", "axis": 0, "shape": "[G, S] bool"}]
    return layout


class ExportEncoder(nn.Module):
    """`Seq2Seq.init_state` on masks: src [B, S] int64, src_lengths [B] int64 -> the state tensors.

    The recurrent layers are ONNX-style operators with sequence lengths (see the module doc); the
    embedding, bridge and attention keys are the model's own modules. Padded memory positions are
    zero, as `pad_packed_sequence` leaves them.
    """

    def __init__(self, model: Seq2Seq) -> None:
        super().__init__()
        enc = model.encoder
        self.model = model
        self.kind = _cell_kind(enc.rnn)
        self.hidden_size = enc.rnn.hidden_size
        self.num_layers = enc.rnn.num_layers
        self.names = [s["name"] for s in state_layout(model)]
        for layer in range(self.num_layers):
            w, r, b = _onnx_weights(enc.rnn, layer, self.kind)
            self.register_buffer(f"w{layer}", w)
            self.register_buffer(f"r{layer}", r)
            self.register_buffer(f"b{layer}", b)

    def forward(self, src: Tensor, src_lengths: Tensor) -> tuple[Tensor, ...]:
        model = self.model
        x = model.encoder.embedding(src).transpose(0, 1)  # [S, B, E] (dropout: eval mode)
        for layer in range(self.num_layers):
            y, h, c = _RNNLayer.apply(x, src_lengths, getattr(self, f"w{layer}"), getattr(self, f"r{layer}"),
                                      getattr(self, f"b{layer}"), self.kind, self.hidden_size)
            x = y.permute(0, 2, 1, 3).reshape(y.size(0), y.size(2), -1)  # [S, B, D*H]
        positions = torch.arange(src.size(1), device=src.device).unsqueeze(0)  # [1, S]
        src_mask = positions < src_lengths.unsqueeze(1)  # [B, S] True at real tokens
        memory = x.transpose(0, 1) * src_mask.unsqueeze(2).to(x.dtype)  # [B, S, D*H], zero at padding
        final_hidden = h.transpose(0, 1).reshape(src.size(0), -1)  # [B, D*H] forward direction first
        final_cell = c.transpose(0, 1).reshape(src.size(0), -1) if self.kind == "lstm" else None
        if model.bridge is not None:
            hidden, cell = model.bridge(final_hidden, final_cell)  # [L, B, H] each
        else:
            zeros = final_hidden[:, :1].mul(0).unsqueeze(0)  # [1, B, 1]: batch-sized without a shape op
            hidden = zeros.expand(model.decoder_layers, -1, model.decoder_hidden_size).contiguous()
            cell = hidden.clone() if model.is_lstm else None
        state = model.decoder.init_state(memory, src_mask, hidden, cell)
        return tuple(_state_tensor(state, name) for name in self.names)


def _state_tensor(state: DecoderState, name: str) -> Tensor:
    return state.pad_mask if name == "src_pad_mask" else getattr(state, name)


class _StepCell(nn.Module):
    """A stacked torch RNN for ONE time step, written as matrix products and gates (eval mode).

    The exported step uses it in place of the decoder's `nn.RNN/GRU/LSTM`: onnxruntime's int8
    quantizer turns matrix products into int8 ones, but not GRU or plain RNN operators, and one step
    needs none of an RNN operator's sequence handling. Same call signature as the
    torch module: inputs [N, 1, I], hx [L, N, H] (or (h, c)) -> outputs [N, 1, H], new state.
    """

    def __init__(self, rnn: nn.RNNBase) -> None:
        super().__init__()
        self.kind = _cell_kind(rnn)
        self.num_layers = rnn.num_layers
        self.rnn = rnn  # the weights, read in place

    def forward(self, inputs: Tensor, hx):
        h0, c0 = hx if self.kind == "lstm" else (hx, None)
        x = inputs.squeeze(1)  # [N, I]
        hs, cs = [], []
        for layer in range(self.num_layers):
            w_ih, w_hh = getattr(self.rnn, f"weight_ih_l{layer}"), getattr(self.rnn, f"weight_hh_l{layer}")
            b_ih = getattr(self.rnn, f"bias_ih_l{layer}") if self.rnn.bias else None
            b_hh = getattr(self.rnn, f"bias_hh_l{layer}") if self.rnn.bias else None
            h = h0[layer]  # [N, H]
            gi = nn.functional.linear(x, w_ih, b_ih)  # [N, G*H]
            gh = nn.functional.linear(h, w_hh, b_hh)  # [N, G*H]
            if self.kind == "gru":
                ir, iz, i_n = gi.chunk(3, dim=1)
                hr, hz, h_n = gh.chunk(3, dim=1)
                r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
                x = (1 - z) * torch.tanh(i_n + r * h_n) + z * h
            elif self.kind == "lstm":
                i, f, g, o = (gi + gh).chunk(4, dim=1)
                c = torch.sigmoid(f) * c0[layer] + torch.sigmoid(i) * torch.tanh(g)
                x = torch.sigmoid(o) * torch.tanh(c)
                cs.append(c)
            else:
                x = torch.relu(gi + gh) if self.kind == "rnn_relu" else torch.tanh(gi + gh)
            hs.append(x)
        hidden = torch.stack(hs)  # [L, N, H]
        return x.unsqueeze(1), ((hidden, torch.stack(cs)) if self.kind == "lstm" else hidden)


class _TopK(torch.autograd.Function):
    """The k best entries of each row, best first (ONNX TopK: equal values, lower index first)."""

    @staticmethod
    def forward(ctx, x, k):  # noqa: D102
        return torch.topk(x, int(k), dim=-1)

    @staticmethod
    def symbolic(g, x, k):  # noqa: D102
        k = g.op("Reshape", k, g.op("Constant", value_t=torch.tensor([1])))
        return g.op("TopK", x, k, axis_i=-1, largest_i=1, sorted_i=1, outputs=2)


class ExportStep(nn.Module):
    """`Seq2Seq.step` with a flat state: prev_tokens [N] int64, k [] int64, *state ->
    log_probs [N, V] float32, topk_log_probs [N, k], topk_ids [N, k] int64 (each row's k best
    continuations, for the search), attention [N, S] float32 (when the model attends), then the new
    per-row state tensors."""

    def __init__(self, model: Seq2Seq) -> None:
        super().__init__()
        self.model = copy.deepcopy(model)
        self.model.decoder.rnn = _StepCell(self.model.decoder.rnn)
        self.names = [s["name"] for s in state_layout(model)]
        self.row_names = [s["name"] for s in state_layout(model) if s["per"] == "row"]

    def forward(self, prev_tokens: Tensor, k: Tensor, *tensors: Tensor) -> tuple[Tensor, ...]:
        given = dict(zip(self.names, tensors))
        state = DecoderState(hidden=given["hidden"], cell=given.get("cell"), feed=given.get("feed"),
                             keys=given.get("keys"), values=given.get("values"),
                             pad_mask=given.get("src_pad_mask"))
        log_probs, state, attention = self.model.step(prev_tokens, state)
        top_lp, top_ids = _TopK.apply(log_probs, k)
        outputs = [log_probs, top_lp, top_ids] + ([attention] if attention is not None else [])
        return tuple(outputs + [getattr(state, name) for name in self.row_names])


def graph_names(model: Seq2Seq) -> dict[str, list[str]]:
    """Input and output names of both graphs (config.json lists them for the runtime)."""
    state = [s["name"] for s in state_layout(model)]
    rows = [s["name"] for s in state_layout(model) if s["per"] == "row"]
    attention = ["attention"] if model.decoder.attention is not None else []
    return {"encoder_inputs": ["src", "src_lengths"], "encoder_outputs": state,
            "step_inputs": ["prev_tokens", "k"] + state,
            "step_outputs": ["log_probs", "topk_log_probs", "topk_ids"] + attention + [f"new_{n}" for n in rows]}


def export_graphs(model: Seq2Seq, folder: Path, opset: int = OPSET) -> None:
    """Write encoder.onnx and decoder_step.onnx for `model` (in eval mode, on the CPU) into `folder`."""
    model = model.float().cpu().eval()
    names = graph_names(model)
    layout = state_layout(model)
    # Example: 2 sentences of lengths 5 and 3; the step with 2 rows per sentence (beam-like groups),
    # so that the traced graph keeps the grouped reshape general.
    src = torch.tensor([[5, 6, 7, 8, 3], [9, 10, 3, 0, 0]])
    src_lengths = torch.tensor([5, 3])
    encoder = ExportEncoder(model).eval()
    with torch.no_grad():
        state = encoder(src, src_lengths)
    axes = {"hidden": {1: "rows"}, "cell": {1: "rows"}, "feed": {0: "rows"},
            "keys": {0: "sources", 1: "src_len"}, "values": {0: "sources", 1: "src_len"},
            "src_pad_mask": {0: "sources", 1: "src_len"}}
    enc_axes = {"src": {0: "batch", 1: "src_len"}, "src_lengths": {0: "batch"}}
    enc_axes.update({n: {a: ("batch" if v in ("rows", "sources") else v) for a, v in axes[n].items()}
                     for n in names["encoder_outputs"]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's tracer warnings concern shapes we made dynamic
        torch.onnx.export(encoder, (src, src_lengths), str(folder / "encoder.onnx"), dynamo=False,
                          input_names=names["encoder_inputs"], output_names=names["encoder_outputs"],
                          dynamic_axes=enc_axes, opset_version=opset)
        index = torch.tensor([0, 0, 1, 1])
        rows = tuple(t.index_select(s["axis"], index) if s["per"] == "row" else t
                     for s, t in zip(layout, state))
        prev = torch.tensor([2, 5, 2, 9])
        step_axes = {"prev_tokens": {0: "rows"}, "log_probs": {0: "rows"}, "attention": {0: "rows", 1: "src_len"},
                     "topk_log_probs": {0: "rows", 1: "k"}, "topk_ids": {0: "rows", 1: "k"}}
        step_axes.update({n: axes[n] for n in names["encoder_outputs"]})
        step_axes.update({f"new_{n}": axes[n] for n in names["encoder_outputs"] if f"new_{n}" in names["step_outputs"]})
        torch.onnx.export(ExportStep(model).eval(), (prev, torch.tensor(3), *rows), str(folder / "decoder_step.onnx"),
                          dynamo=False, input_names=names["step_inputs"], output_names=names["step_outputs"],
                          dynamic_axes=step_axes, opset_version=opset)
