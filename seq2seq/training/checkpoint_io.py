"""Lightning's side of checkpoint writing: the plugin that makes every save atomic.

Kept apart from `seq2seq.checkpoint.format` so that reading a checkpoint (translation, scoring,
averaging) never imports Lightning.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.plugins.io import TorchCheckpointIO

from seq2seq.checkpoint.format import atomic_torch_save


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint I/O whose saves are atomic (temporary file + rename)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        atomic_torch_save(checkpoint, path)
