"""The Lightning hooks every saliencylab training module shares: one step and one epoch summary per stage."""
from __future__ import annotations

import lightning as L
from torch import Tensor

from saliencylab.types import Batch


class StagedModule(L.LightningModule):
    """Routes train / val / test steps to ``_step(batch, stage)`` and epoch ends to ``_log_epoch(stage)``."""

    def _step(self, batch: Batch, stage: str) -> Tensor:
        raise NotImplementedError

    def _log_epoch(self, stage: str) -> None:
        raise NotImplementedError

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._step(batch, "test")

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")
