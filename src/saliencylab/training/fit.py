"""One Lightning fit for every training scheme: checkpoints, early stopping, progress and resuming after a kill.

Every ``fit_*`` function builds its LightningModule and hands it to :func:`fit_module`, so all schemes share
the same checkpoint layout (``OUT/checkpoints/``: the best by ``monitor`` and ``last.ckpt``, the state at the
end of the last finished epoch), the same resume rule and the same scale options (:class:`~saliencylab.scale.Scale`:
devices, nodes, strategy, precision). After the fit, a ``fit_*`` writes its weights and description through
:func:`on_rank_zero`: under ``ddp`` every rank runs the code after ``fit``, and only one may write.
"""
from __future__ import annotations

import logging
import pickle
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint

from saliencylab.scale import Scale

LAST_CHECKPOINT = "last.ckpt"
T = TypeVar("T")


def quiet_lightning() -> None:
    """Keep the terminal for our own progress: Lightning's info lines and a library deprecation notice go."""
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")  # frozen classifiers, on purpose
    warnings.filterwarnings("ignore", message=r"Total length of `list` across ranks is zero")  # no validation set


def last_checkpoint(out_dir: str | Path) -> Path | None:
    """``OUT/checkpoints/last.ckpt`` when an earlier fit into ``out_dir`` saved one, else None."""
    path = Path(out_dir) / "checkpoints" / LAST_CHECKPOINT
    return path if path.is_file() else None


def check_resumable(module: L.LightningModule, checkpoint: Path) -> None:
    """ValueError naming ``checkpoint`` when it cannot be read or was saved by a module with other
    hyper-parameters (it would not load, or would silently continue another fit)."""
    try:
        saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        return  # holds objects only Lightning's own loader reads; it checks the weights when loading
    except (RuntimeError, EOFError, OSError) as error:
        raise ValueError(f"cannot read checkpoint {checkpoint} ({error}); delete it or rerun without --resume "
                         "to start over") from None
    before, now = saved.get("hyper_parameters", {}), dict(module.hparams)
    changed = sorted(key for key in set(before) | set(now) if repr(before.get(key)) != repr(now.get(key)))
    if changed:
        shown = "; ".join(f"{key}: {before.get(key)!r} then, {now.get(key)!r} now" for key in changed)
        raise ValueError(f"{checkpoint} was saved with other settings ({shown}); resume with the same settings, "
                         "or rerun without --resume to start over")


def fit_module(module: L.LightningModule, datamodule: L.LightningDataModule, out_dir: str | Path, *,
               max_epochs: int, monitor: str | None = "val_loss", patience: int | None = None,
               min_delta: float = 0.0, resume: bool = False, progress: bool = True, accelerator: str = "auto",
               deterministic: bool | str = True, callbacks: Sequence[Callback] = (), scale: Scale = Scale(),
               **trainer_options: object) -> tuple[L.Trainer, ModelCheckpoint]:
    """Fit ``module`` for at most ``max_epochs`` epochs; return the trainer and its checkpoint callback.

    ``monitor``: the logged value (minimised) whose best epoch ``checkpoint.best_model_path`` names; None keeps
    only the last epoch (``best_model_path`` is then the last checkpoint). ``patience``: early stopping on
    ``monitor`` after that many epochs without an improvement of ``min_delta`` (None: no early stopping).
    ``resume``: continue from ``OUT/checkpoints/last.ckpt`` (weights, optimiser, epoch, early-stopping and
    checkpoint state) when it exists, saved by a module of the same hyper-parameters (:func:`check_resumable`);
    without it a fit starts from scratch. ``scale``: devices, nodes, strategy and precision (one process in float32
    by default); under several processes each rank trains on its slice of every epoch and the modules log with
    ``sync_dist``, so the monitored value is the whole validation set's. ``trainer_options`` go to
    ``lightning.Trainer`` (e.g. ``limit_train_batches``).
    """
    out_dir = Path(out_dir)
    checkpoint = ModelCheckpoint(dirpath=out_dir / "checkpoints", monitor=monitor, mode="min",
                                 save_top_k=1, save_last=monitor is None)
    # Lightning 2.6's save_last writes last.ckpt only in epochs that also save a new best, so with a monitor
    # last.ckpt would be the best epoch, and --resume would go back to it: a second callback keeps one unmonitored
    # checkpoint, overwritten after every epoch (saved after the best one's, so it holds that one's state too).
    latest = [] if monitor is None else [ModelCheckpoint(dirpath=out_dir / "checkpoints", monitor=None, save_top_k=1,
                                                         filename=Path(LAST_CHECKPOINT).stem,
                                                         enable_version_counter=False)]
    stopping = [] if patience is None else [EarlyStopping(monitor, min_delta=min_delta, patience=patience)]
    trainer = L.Trainer(max_epochs=max_epochs, accelerator=accelerator, logger=False,
                        deterministic=deterministic, callbacks=[*stopping, checkpoint, *latest, *callbacks],
                        enable_progress_bar=progress, enable_model_summary=False, default_root_dir=out_dir,
                        **scale.trainer_options(), **trainer_options)
    previous = last_checkpoint(out_dir) if resume else None
    if previous is not None:
        check_resumable(module, previous)
    trainer.fit(module, datamodule=datamodule, ckpt_path=previous)
    if monitor is not None and checkpoint.best_model_score is None and checkpoint.best_model_path:
        # ddp_spawn / ddp_fork hand only the best path back to this process; its score is in the file
        state = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=True)
        checkpoint.best_model_score = state["callbacks"][checkpoint.state_key]["best_model_score"]
    return trainer, checkpoint


def on_rank_zero(trainer: L.Trainer, write: Callable[[], T]) -> T | None:
    """``write()`` (a fit's weights and description) on global rank 0 only; then every rank waits for it, so none
    returns before the files exist. Returns ``write()``'s value on rank 0, None elsewhere."""
    value = write() if trainer.is_global_zero else None
    trainer.strategy.barrier("saliencylab-write")
    return value
