"""Mixed precision: the one map from a precision setting to an autocast dtype, and the one bf16 probe.

Two vocabularies name the same three choices: the Trainer's (`trainer.precision`: '32-true',
'bf16-mixed', '16-mixed', ...) and seq2seq-translate's `--precision` (fp32, bf16, fp16).
"""

from __future__ import annotations

import torch


def precision_dtype(precision: str | int | None, device_type: str) -> torch.dtype | None:
    """The autocast dtype of a precision setting on a device type; None means float32, no autocast.

    'bf16-mixed', 'bf16' -> bfloat16; '16-mixed', 'fp16' -> float16, except on the CPU, where
    Lightning runs '16-mixed' as bfloat16 (so decoding there does too); '32-true', 'fp32' -> None.
    """
    name = str(precision)
    if name.startswith("bf16") or (name.startswith(("16", "fp16")) and device_type == "cpu"):
        return torch.bfloat16
    if name.startswith(("16", "fp16")):
        return torch.float16
    return None


def bf16_supported(device_type: str) -> bool:
    """Whether this machine runs the model under bfloat16 autocast: on CUDA, whether the GPU has
    bf16; on the CPU, whether oneDNN runs an LSTM in bf16 (it needs AVX512-BF16 hardware)."""
    if device_type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            torch.nn.LSTM(2, 2)(torch.zeros(1, 1, 2))
    except RuntimeError:
        return False
    return True
