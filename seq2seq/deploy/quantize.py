"""int8 on the CPU in torch: `seq2seq-translate --quantize int8` (dynamic quantization)."""

from __future__ import annotations

import warnings

import torch
from torch import nn
from torch.ao.nn.quantized.dynamic.modules.rnn import RNNBase as QuantizedRNN
from torch.ao.quantization import quantize_dynamic

from seq2seq.model import Seq2Seq


def quantize_torch_int8(model: Seq2Seq) -> nn.Module:
    """A copy of `model` with torch's dynamic int8 quantization of its Linear, LSTM and GRU layers
    (int8 weights; activations quantized per call, so no calibration data). Plain RNN layers
    (rnn_tanh, rnn_relu) have no dynamic int8 kernel in torch and stay float32.

    `torch.ao.quantization.quantize_dynamic` is deprecated in favour of torchao, whose int8 configs
    cover Linear layers only; it is still the one torch API that quantizes recurrent layers.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        quantized = quantize_dynamic(model.float().cpu().eval(), {nn.Linear, nn.LSTM, nn.GRU},
                                     dtype=torch.qint8, inplace=False)
    for module in quantized.modules():
        if isinstance(module, QuantizedRNN):
            # the model calls flatten_parameters() (a cuDNN layout hint) before every run; quantized
            # RNNs have packed weights of their own and no such method
            module.flatten_parameters = _nothing
    return quantized


def _nothing() -> None:
    return None
