"""How many processes, on how many machines, in which precision: one set of options for every training scheme
and for bulk explanation and benchmarking.

Training hands a :class:`Scale` to ``lightning.Trainer`` (:func:`saliencylab.training.fit.fit_module`), so
``ddp``, ``ddp_spawn``, ``fsdp``, SLURM and torchrun are Lightning's own. ``explain`` and ``bench run`` use
Lightning Fabric's launcher and cluster environments (:func:`run_on_ranks`) with plain ``torch.distributed``
underneath: each rank computes its own shard of the engine's fixed batches into the shared output folder, and
rank 0 merges (see ``bench/run.py`` and ``bench/export.py``). Not Lightning's prediction loop: its distributed
sampler repeats images to even out the ranks, it has no notion of the engine's resumable batch files, and
scoring (metrics, reference rows) would need a second runner beside the engine.

Seeds: every rank calls ``seed_everything`` with the same seed, so models start equal, Lightning's
``DistributedSampler`` (seeded by that seed) deals one shuffled order out to the ranks, and the modules' own
random choices (the masker's historic classifier, RT-saliency's alternative) agree across ranks, as DDP needs
every rank to take the same branch.
"""
from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import torch
from tqdm import tqdm

T = TypeVar("T")

PRECISIONS = ("32", "32-true", "bf16-mixed", "16-mixed", "bf16-true", "64-true")
FORKSERVER = "ddp_forkserver"
"""DDP whose workers fork from a fresh server process (one that never ran torch work), with torch, Lightning and
the engine preloaded there. ``ddp_fork`` hangs when the launching process has already run OpenMP work (its
children wait on OpenMP threads that were not forked); ``ddp_spawn`` imports everything again in every worker
of every launch. The server starts once per process (seconds), later launches fork from it."""
PRELOAD = ["torch", "lightning.pytorch", "saliencylab.bench.run", "saliencylab.bench.export",
           "saliencylab.training.fit"]


@dataclass(frozen=True)
class Scale:
    """``devices``: processes per machine (one per GPU; on CPU, processes); ``num_nodes``: machines;
    ``strategy``: a Lightning strategy name (``auto``, ``ddp``, ``ddp_spawn``, ``fsdp``, ...) or
    :data:`FORKSERVER`;
    ``precision``: a Lightning precision (``32``, ``bf16-mixed``, ``16-mixed``; training only)."""

    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32"

    def __post_init__(self) -> None:
        if not isinstance(self.devices, int) or self.devices < 1:
            raise ValueError(f"devices must be a whole number >= 1, got {self.devices!r}")
        if not isinstance(self.num_nodes, int) or self.num_nodes < 1:
            raise ValueError(f"num_nodes must be a whole number >= 1, got {self.num_nodes!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")

    @property
    def processes(self) -> int:
        """Processes in all: devices × nodes."""
        return self.devices * self.num_nodes

    def trainer_options(self) -> dict[str, object]:
        """The ``lightning.Trainer`` keywords: devices, num_nodes, strategy, precision."""
        return {"devices": self.devices, "num_nodes": self.num_nodes, "strategy": lightning_strategy(self.strategy),
                "precision": self.precision}


def lightning_strategy(name: str, fabric: bool = False) -> object:
    """The strategy to hand to ``lightning.Trainer`` (or, ``fabric=True``, to Fabric): ``name`` itself, except
    :data:`FORKSERVER`, which becomes a DDP strategy of start method "forkserver"."""
    if name != FORKSERVER:
        return name
    import multiprocessing

    import torch.multiprocessing

    multiprocessing.set_forkserver_preload(PRELOAD)
    # tensors travel to the workers through shared memory; file descriptors failed for a LightningModule's
    # ("unable to resize file"), named files do not
    torch.multiprocessing.set_sharing_strategy("file_system")
    if fabric:
        from lightning.fabric.strategies import DDPStrategy
    else:
        from lightning.pytorch.strategies import DDPStrategy
    return DDPStrategy(start_method="forkserver")


def _fabric_accelerator(device: str) -> str:
    """``cpu`` / ``cuda`` / ``cuda:1`` (the commands' --device) -> Fabric's accelerator; a numbered GPU is refused,
    since the ranks take GPUs 0..devices-1 of their machine."""
    if device == "cpu":
        return "cpu"
    if device in ("cuda", "gpu", "auto"):
        return device
    raise ValueError(f"--device {device} names one device; with --devices N give --device cuda (the ranks take "
                     "GPUs 0..N-1; choose them with CUDA_VISIBLE_DEVICES) or --device cpu")


def run_on_ranks(scale: Scale, device: str, work: Callable[..., T], *args: object) -> T:
    """Run ``work(rank, world, device, barrier, *args)`` in every process of ``scale``; return its value in this
    process (rank 0's when this process started the others).

    One process (the default): ``work(0, 1, device, no-op, *args)`` here. Otherwise Lightning Fabric starts
    (``ddp``: re-runs this command per rank; ``ddp_spawn``, :data:`FORKSERVER`: child processes) or joins
    (torchrun, SLURM: give ``--devices`` = processes per node) the processes and sets up ``torch.distributed``
    (gloo on CPU, NCCL on GPU); ``barrier()`` waits for every rank. ``work`` and ``args`` must pickle (but under
    ``ddp``).
    """
    if scale.processes == 1:
        return work(0, 1, device, lambda: None, *args)
    from lightning.fabric import Fabric

    fabric = Fabric(accelerator=_fabric_accelerator(device), devices=scale.devices, num_nodes=scale.num_nodes,
                    strategy=lightning_strategy(scale.strategy, fabric=True))
    return fabric.launch(_on_rank, work, *args)


def _on_rank(fabric, work: Callable[..., T], *args: object) -> T:
    return work(fabric.global_rank, fabric.world_size, str(fabric.device), fabric.barrier, *args)


def run_shards(scale: Scale, device: str, compute: Callable[..., T], merge: Callable[[], T],
               progress: bool = True, shard: tuple[int, int] = (0, 1)) -> T | None:
    """``compute(shard=(i, n), device=..., progress=...)`` on every rank ``i`` of ``n``; with several ranks, rank 0
    then returns ``merge()`` once every rank is done (the others return None). One process: ``compute``'s value.
    ``shard=(j, m)``: this job is part j of m started by hand; rank i then computes part j + m·i of m·n.

    ``compute`` writes its shard of a resumable, sharded job into a shared folder (the engine's batch files, the
    explained maps) and ``merge`` reads the whole folder; both must pickle under ``ddp_spawn``.
    """
    return run_on_ranks(scale, device, _compute_then_merge, compute, merge, progress, shard)


def _compute_then_merge(rank: int, world: int, device: str, barrier: Callable[[], None], compute: Callable[..., T],
                        merge: Callable[[], T], progress: bool, shard: tuple[int, int]) -> T | None:
    part, parts = shard
    value = compute(shard=(part + parts * rank, parts * world), device=device, progress=progress and rank == 0)
    if world == 1:
        return value
    barrier()
    return merge() if rank == 0 else None


def in_processes(task: Callable[..., str], jobs: Sequence[tuple], workers: int, desc: str,
                 progress: bool = True) -> None:
    """``task(*job)`` for every job, ``workers`` at a time, each in a spawned process (a fresh interpreter: no
    OpenMP state forked; a script calling this needs the ``if __name__ == "__main__":`` guard that multiprocessing
    asks for). ``task`` returns one line, printed as its job ends; a job's error is raised here. For independent
    single-threaded jobs (trainings of the reproductions) on a CPU with more cores than one job uses."""
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(task, *job) for job in jobs]
        for future in tqdm(as_completed(futures), total=len(jobs), desc=f"{desc} ({workers} processes)",
                           disable=not progress):
            tqdm.write(f"  {future.result()}")


@contextmanager
def intra_op_threads(count: int | None) -> Iterator[None]:
    """Run with ``count`` torch intra-op threads (None: unchanged); restore the previous number afterwards."""
    previous = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
