"""One Lightning fit for every training scheme: checkpoints, early stopping, progress and resuming after a kill.

Every ``fit_*`` function builds its LightningModule and hands it to :func:`fit_module`, so all schemes share
the same checkpoint layout (``OUT/checkpoints/``: the best by ``monitor`` and ``last.ckpt``, the state at the
end of the last finished epoch) and the same resume rule.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint

LAST_CHECKPOINT = "last.ckpt"


def last_checkpoint(out_dir: str | Path) -> Path | None:
    """``OUT/checkpoints/last.ckpt`` when an earlier fit into ``out_dir`` saved one, else None."""
    path = Path(out_dir) / "checkpoints" / LAST_CHECKPOINT
    return path if path.is_file() else None


def fit_module(module: L.LightningModule, datamodule: L.LightningDataModule, out_dir: str | Path, *,
               max_epochs: int, monitor: str | None = "val_loss", patience: int | None = None,
               min_delta: float = 0.0, resume: bool = False, progress: bool = True, accelerator: str = "auto",
               deterministic: bool | str = True, callbacks: Sequence[Callback] = (),
               **trainer_options: object) -> tuple[L.Trainer, ModelCheckpoint]:
    """Fit ``module`` for at most ``max_epochs`` epochs; return the trainer and its checkpoint callback.

    ``monitor``: the logged value (minimised) whose best epoch ``checkpoint.best_model_path`` names; None keeps
    only the last epoch (``best_model_path`` is then the last checkpoint). ``patience``: early stopping on
    ``monitor`` after that many epochs without an improvement of ``min_delta`` (None: no early stopping).
    ``resume``: continue from ``OUT/checkpoints/last.ckpt`` (weights, optimiser, epoch, early-stopping and
    checkpoint state) when it exists; without it a fit starts from scratch. ``trainer_options`` go to
    ``lightning.Trainer`` (e.g. ``limit_train_batches``).
    """
    out_dir = Path(out_dir)
    checkpoint = ModelCheckpoint(dirpath=out_dir / "checkpoints", monitor=monitor, mode="min",
                                 save_top_k=1, save_last=True)
    stopping = [] if patience is None else [EarlyStopping(monitor, min_delta=min_delta, patience=patience)]
    trainer = L.Trainer(max_epochs=max_epochs, accelerator=accelerator, devices=1, logger=False,
                        deterministic=deterministic, callbacks=[*stopping, checkpoint, *callbacks],
                        enable_progress_bar=progress, enable_model_summary=False, default_root_dir=out_dir,
                        **trainer_options)
    previous = last_checkpoint(out_dir) if resume else None
    trainer.fit(module, datamodule=datamodule, ckpt_path=previous)
    return trainer, checkpoint
