"""``saliencylab bench speed``: how fast each method runs, against the least work it must do.

For every method: images/s, seconds per image, peak memory, and the ratio of its time to its
minimum pass count (``method.passes``) × the time of one classifier forward (+ backward) on the
same batch, or of one forward of the method's own network where it declares one (trained explainers).
A ratio of 1.15 means 15 % overhead over that minimum. The methods and the unit passes
run interleaved, in rounds (one unit forward, one unit forward+backward, then every method once),
so a machine's changing load hits them alike; each round gives one ratio against that round's unit
times, and a row reports the median ratio and the lowest and highest (the spread).
"""
from __future__ import annotations

import ctypes
import os
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor
from torchvision.models import vgg16_bn

from saliencylab import methods
from saliencylab.insecurity.attribution import confidence_score, difficulty_attribution
from saliencylab.methods.base import scoped_eval
from saliencylab.methods.cam import single_output
from saliencylab.metrics import faithfulness
from saliencylab.models.classifier import Classifier, captured_output
from saliencylab.models.explainer import build_explainer
from saliencylab.models.inmodel import InModelNet
from saliencylab.models.masker import Masker, layer_channels
from saliencylab.models.zoo import build_classifier

REDUCED_SETTINGS: dict[str, dict] = {
    "integrated_gradients": {"steps": 20},
    "occlusion": {"stride": 16},
    "smoothgrad": {"samples": 10},
    "rise": {"num_masks": 1000},
    "extremal_perturbation": {"max_iter": 40, "areas": (0.1, 0.2), "step": 3, "sigma": 9.0},
    "meaningful_perturbation": {"max_iter": 100},
    "igos_pp": {"iterations": 3, "steps": 5},
}
"""Cheaper hyper-parameters for the slowest methods, used by the demo and by ``--settings reduced``;
EP's ``step``/``sigma`` are scaled from 224 px to the demo's 96 px. The speed ratio barely depends
on them: they scale the work and its minimum alike."""


def settings_for(name: str, settings: str) -> dict:
    """Hyper-parameters of ``name`` under ``settings`` ("default": the papers' defaults, or "reduced")."""
    if settings not in ("default", "reduced"):
        raise ValueError(f"settings must be 'default' or 'reduced', got {settings!r}")
    if settings == "default":
        return {}
    allowed = methods.hyperparameters(name)
    return {k: v for k, v in REDUCED_SETTINGS.get(name, {}).items() if k in allowed}


@dataclass
class SpeedRow:
    method: str
    images_per_second: float
    seconds_per_image: float
    peak_memory_mb: float
    minimum_seconds_per_image: float
    ratio: float
    ratio_low: float
    ratio_high: float
    settings: dict


def _resident_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _release_freed_memory() -> None:
    """Hand the memory that glibc's malloc keeps after frees back to the system (``malloc_trim``; nothing
    elsewhere). glibc keeps up to 64 MiB of freed heap for reuse, so without this a method measured after a
    bigger one allocates inside memory already resident and its peak reads 0."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


@contextmanager
def peak_memory(device: torch.device) -> Iterator[list[float]]:
    """Yield a one-element list that holds, afterwards, the peak extra memory in MiB.

    CUDA: ``torch.cuda.max_memory_allocated`` above the start. CPU: resident set size sampled
    every millisecond by a thread (Linux), above the start, with freed memory handed back first.
    """
    result = [float("nan")]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        yield result
        torch.cuda.synchronize(device)
        result[0] = (torch.cuda.max_memory_allocated(device) - start) / 2 ** 20
        return
    if not os.path.exists("/proc/self/statm"):
        yield result
        return
    _release_freed_memory()
    start, peak, done = _resident_bytes(), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _resident_bytes())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield result
    finally:
        done.set()
        sampler.join()
        result[0] = max(peak[0] - start, 0) / 2 ** 20


def timed(run: Callable[[], object], device: torch.device) -> float:
    """Wall time of one call of ``run`` (synchronised on CUDA)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def interleaved(calls: Mapping[str, Callable[[], object]], device: torch.device, repeats: int) -> dict[str, list[float]]:
    """Wall times of ``repeats`` rounds, each calling every entry of ``calls`` once, so a machine's
    changing load hits them alike; round i's times are the i-th entries of each list.

    Even rounds call the entries in order, odd rounds in reverse (an ABBA design), so no entry
    always runs first or always follows the same neighbour: in bench peers, the method always ran
    right before its peer, and the call after another ResNet-50 pass found the caches and the
    allocator in a different state."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for round_index in range(repeats):
        names = list(calls) if round_index % 2 == 0 else list(reversed(calls))
        for name in names:
            times[name].append(timed(calls[name], device))
    return times


def ratio_spread(times: Sequence[float], references: Sequence[float]) -> tuple[float, float, float]:
    """Median, lowest and highest of the per-round ratios times[i] / references[i] (NaNs when a reference is 0)."""
    if min(references) <= 0:
        return float("nan"), float("nan"), float("nan")
    ratios = sorted(t / r for t, r in zip(times, references))
    return statistics.median(ratios), ratios[0], ratios[-1]


def no_grad_call(network: Callable[[Tensor], Tensor], images: Tensor) -> None:
    """One forward of ``network`` without autograd: the unit of a method that runs its own network."""
    with torch.no_grad():
        network(images)


def unit_passes(classifier: Classifier, images: Tensor) -> tuple[Callable[[], None], Callable[[], None]]:
    """One forward, and one forward + backward to the input, of the whole batch."""
    def forward_backward() -> None:
        inputs = images.clone().requires_grad_(True)
        torch.autograd.grad(classifier(inputs)[:, 0].sum(), inputs)

    return partial(no_grad_call, classifier, images), forward_backward


def run_speed(model: str = "small_cnn", size: int = 96, batch: int = 8, names: Sequence[str] | None = None,
              settings: str = "reduced", device: str = "cpu", repeats: int = 3, num_classes: int = 6,
              progress: Callable[[str], None] = print) -> list[SpeedRow]:
    """Time every method (or ``names``) on a random-weight ``model`` with ``batch`` images of ``size`` px.

    One warm-up call each (peak memory is taken there), then ``repeats`` (>= 3) interleaved rounds;
    medians over rounds. Trained explainers and the masker are timed with random-weight networks.
    """
    if repeats < 3:
        raise ValueError(f"repeats must be >= 3 (a median and a spread), got {repeats}")
    torch_device = torch.device(device)
    torch.manual_seed(0)
    classifier = build_classifier(model, num_classes).to(torch_device).eval()
    images = torch.rand(batch, 3, size, size, device=torch_device)
    targets = torch.randint(num_classes, (batch, 1))
    built, peaks = {}, {}
    for name in names or methods.names():
        extra = {}
        if "explainer" in methods.hyperparameters(name):  # timing needs a network, not a trained one
            extra["explainer"] = build_explainer("light", num_classes).to(torch_device).eval()
        if "masker" in methods.hyperparameters(name):
            extra["masker"] = Masker(["auto"], layer_channels(classifier, ["auto"])).to(torch_device)
        if "network" in methods.hyperparameters(name):  # the in-model explainer's own network (paper 004)
            extra["network"] = InModelNet(num_classes, "vgg").to(torch_device).eval()
        # max_batch = the unit's batch: a classifier's time per image depends on the batch (cache), so every
        # pass a method makes runs at the unit's size (Score-CAM at 64 rows per call ran 1.45x its unit of 8, at 8 0.8x)
        built[name] = methods.build(name, classifier, max_batch=batch, **settings_for(name, settings), **extra)
    forward, forward_backward = unit_passes(classifier, images)
    with scoped_eval(classifier):
        forward(), forward_backward()
    for name, method in built.items():
        with peak_memory(torch_device) as peak:
            method.attribute(images, targets)
        peaks[name] = peak[0]
    calls = {" forward": forward, " forward_backward": forward_backward}  # not method names: those have no space
    passes = {name: method.passes(size, size) for name, method in built.items()}
    calls.update({f" forward {name}": partial(no_grad_call, counted.network, images)
                  for name, counted in passes.items() if counted.network is not None})  # a method's own network
    calls.update({name: partial(method.attribute, images, targets) for name, method in built.items()})
    with scoped_eval(classifier):
        times = interleaved(calls, torch_device, repeats)
    units = [(f, max(fb - f, 0.0)) for f, fb in zip(times[" forward"], times[" forward_backward"])]
    forward_time, backward_time = (statistics.median(u[i] for u in units) for i in (0, 1))
    progress(f"{model} at {size} px, batch {batch} on {torch_device}: forward {forward_time / batch * 1e3:.2f} ms/image, "
             f"backward {backward_time / batch * 1e3:.2f} ms/image (medians of {repeats} interleaved rounds)")
    rows = []
    for name in built:
        own = times.get(f" forward {name}")
        minima = ([passes[name].forward * f for f in own] if own else
                  [passes[name].forward * f + passes[name].backward * b for f, b in units])
        per_image = statistics.median(times[name]) / batch
        row = SpeedRow(name, 1 / per_image, per_image, peaks[name], statistics.median(minima) / batch,
                       *ratio_spread(times[name], minima), settings_for(name, settings))
        rows.append(row)
        progress(format_row(row))
    return rows


def format_row(row: SpeedRow) -> str:
    ratio, spread = "–", ""
    if row.ratio == row.ratio:
        ratio, spread = f"{row.ratio:.2f}", f"{row.ratio_low:.2f}–{row.ratio_high:.2f}"
    return (f"{row.method:24s} {row.images_per_second:10.2f} {row.seconds_per_image * 1e3:12.2f} "
            f"{row.peak_memory_mb:10.1f} {row.minimum_seconds_per_image * 1e3:12.2f} {ratio:>7s} {spread:>11s}")


HEADER = (f"{'method':24s} {'images/s':>10s} {'ms/image':>12s} {'peak MiB':>10s} {'min ms/img':>12s} {'ratio':>7s} "
          f"{'spread':>11s}")


@dataclass
class StepRow:
    """One training step's cost: seconds and peak memory per step of ``batch`` images, and its time over the plain
    step's in the same round (median, lowest, highest)."""

    step: str
    seconds_per_step: float
    peak_memory_mb: float
    ratio: float
    ratio_low: float
    ratio_high: float


def training_step_cost(model: str = "small_cnn", size: int = 64, batch: int = 8, device: str = "cpu",
                       repeats: int = 3, num_classes: int = 6,
                       progress: Callable[[str], None] = print) -> list[StepRow]:
    """The cost of a Grad-CAM consistency training step (Pillai & Pirsiavash 2021: CE + λ·L1 between the
    differentiable element-wise Grad-CAMs of ``batch`` images of ``size`` px and of their 2x2 composites, a
    double backward) against a plain CE step, on a random-weight ``model`` in train mode, forward + backward
    (no optimiser step). Peak memory from a warm-up call each; ``repeats`` (>= 3) interleaved rounds."""
    from saliencylab.training.consistency import consistency_loss, differentiable_gradcam

    if repeats < 3:
        raise ValueError(f"repeats must be >= 3 (a median and a spread), got {repeats}")
    torch_device = torch.device(device)
    torch.manual_seed(0)
    classifier = build_classifier(model, num_classes, freeze_backbone=False).to(torch_device).train()
    images = torch.rand(batch, 3, size, size, device=torch_device)
    composites = torch.rand(batch, 3, 2 * size, 2 * size, device=torch_device)
    labels = torch.randint(num_classes, (batch,), device=torch_device)
    quadrants = torch.randint(4, (batch,), device=torch_device)

    def plain() -> None:
        torch.nn.functional.cross_entropy(classifier(images), labels).backward()

    def consistency() -> None:
        logits, image_maps = differentiable_gradcam(classifier, images, labels)
        _, composite_maps = differentiable_gradcam(classifier, composites, labels)
        loss = torch.nn.functional.cross_entropy(logits, labels) + 25 * consistency_loss(
            image_maps, composite_maps, quadrants, image_size=(size, size))
        loss.backward()

    steps = {"plain": plain, "consistency": consistency}
    peaks = {}
    for name, step in steps.items():
        with peak_memory(torch_device) as peak:
            step()
        peaks[name] = peak[0]
        classifier.zero_grad(set_to_none=True)
    def then_zero_grad(step: Callable[[], None]) -> Callable[[], None]:
        return lambda: (step(), classifier.zero_grad(set_to_none=True))

    times = interleaved({name: then_zero_grad(step) for name, step in steps.items()}, torch_device, repeats)
    rows = []
    for name in steps:
        rows.append(StepRow(name, statistics.median(times[name]), peaks[name], *ratio_spread(times[name], times["plain"])))
        progress(f"{name:12s} {rows[-1].seconds_per_step * 1e3:12.1f} {rows[-1].peak_memory_mb:10.1f} "
                 f"{rows[-1].ratio:7.2f} {rows[-1].ratio_low:.2f}–{rows[-1].ratio_high:.2f}")
    return rows


STEP_HEADER = f"{'step':12s} {'ms/step':>12s} {'peak MiB':>10s} {'ratio':>7s} spread"


def aopc_loop(score_fn: Callable[[Tensor], Tensor], images: Tensor, maps: Tensor, classes: Tensor, *, patch: int,
              steps: int, perturbation: str, seed: int = 0) -> Tensor:
    """(N,L+1) MoRF curves the step-by-step way: one image and one classifier pass per step, each step
    perturbing one more patch of a working copy (what :func:`metrics.faithfulness.morf_curves` batches).

    maps (N,H,W) with the patches ordered by :func:`metrics.faithfulness.patch_ranks`; classes (N,).
    """
    replacement = faithfulness.perturbed_images(images, perturbation, seed=seed)
    ranks = faithfulness.patch_ranks(maps, patch)
    curves = torch.empty(len(images), min(steps, int(ranks.max()) + 1) + 1)
    with torch.no_grad():
        for i in range(len(images)):
            image = images[i:i + 1].clone()
            for k in range(curves.shape[1]):
                if k:
                    image = torch.where(ranks[i] == k - 1, replacement[i:i + 1], image)
                curves[i, k] = score_fn(image)[0, classes[i]]
    return curves


def run_aopc_speed(model: str = "resnet18", size: int = 224, images: int = 4, steps: int = 100, patch: int = 16,
                   perturbation: str = "blur", max_batch: int = 64, device: str = "cpu", num_classes: int = 2,
                   progress: Callable[[str], None] = print) -> dict[str, float]:
    """Seconds per image of one MoRF curve (``steps`` + 1 classifier passes) of ``images`` random images on a
    random-weight ``model``: batched (:func:`metrics.faithfulness.morf_curves`, ``max_batch`` images per pass)
    against :func:`aopc_loop`; both give the same curves (checked here to 1e-4)."""
    torch_device = torch.device(device)
    torch.manual_seed(0)
    classifier = build_classifier(model, num_classes).to(torch_device).eval()
    batch = torch.rand(images, 3, size, size, device=torch_device)
    maps = torch.rand(images, 1, size, size, device=torch_device)
    classes = torch.zeros(images, 1, dtype=torch.long, device=torch_device)

    def score_fn(x: Tensor) -> Tensor:
        return classifier(x).softmax(1)

    curves = {}
    batched = timed(lambda: curves.setdefault("batched", faithfulness.morf_curves(
        score_fn, batch, maps, classes, patch=patch, steps=steps, perturbation=perturbation, max_batch=max_batch)),
        torch_device)
    loop = timed(lambda: curves.setdefault("loop", aopc_loop(score_fn, batch, maps[:, 0], classes[:, 0], patch=patch,
                                                             steps=steps, perturbation=perturbation)), torch_device)
    difference = float((curves["batched"][:, 0].cpu() - curves["loop"]).abs().max())
    if difference > 1e-4:
        raise RuntimeError(f"batched and step-by-step MoRF curves differ by {difference:.2e}")
    result = {"model": model, "size": size, "images": images, "steps": steps, "patch": patch,
              "perturbation": perturbation, "max_batch": max_batch, "device": str(torch_device),
              "batched_seconds_per_image": batched / images, "loop_seconds_per_image": loop / images,
              "speedup": loop / batched}
    progress(f"AOPC ({steps} steps, {patch} px patches, {perturbation}) on {model} at {size} px, {images} images on "
             f"{torch_device}: batched {batched / images:.2f} s/image (max_batch {max_batch}), step-by-step loop "
             f"{loop / images:.2f} s/image ({loop / batched:.2f}x)")
    return result


def second_order_speed(size: int = 224, layer: str = "features.42", entries: int = 20, location_batch: int = 64,
                       device: str = "cpu", seed: int = 0) -> dict[str, float]:
    """Seconds per image of the 2ndG difficulty attribution (deliberative explanations, paper 003) on a VGG16-BN
    with random weights (torchvision, built offline) at ``size`` px, layer ``features.42`` (the ReLU after
    conv5_3: 14×14×512 at 224 px), difficulty = the confidence score 1 − max p.

    ``ours``: :func:`saliencylab.insecurity.attribution.difficulty_attribution` (one Hessian-vector product per
    location, ``location_batch`` at a time) on one image, timed once after a warm-up. ``original``: the
    original's way, one double-backward per Hessian entry (h·w·C of them, each a backward of ∂s/∂A_k,hw through
    the network above the layer); ``entries`` of them are timed and the total extrapolated as
    (seconds per entry) × h·w·C (plus the one forward and first backward, which both share).
    """
    torch.manual_seed(seed)
    torch_device = torch.device(device)
    classifier = Classifier(vgg16_bn(weights=None), layers={"conv5_3": layer}).to(torch_device).eval()
    image = torch.rand(1, 3, size, size, device=torch_device)
    difficulty_attribution(classifier, image, "conv5_3", confidence_score, "second_order", location_batch)  # warm-up
    ours = timed(lambda: difficulty_attribution(classifier, image, "conv5_3", confidence_score, "second_order",
                                                location_batch), torch_device)
    with scoped_eval(classifier), torch.enable_grad(), captured_output(classifier.layer("conv5_3")) as outputs:
        start = time.perf_counter()
        score = confidence_score(classifier(image.requires_grad_(True))).sum()
        activation = single_output(outputs, "conv5_3")
        (grad,) = torch.autograd.grad(score, activation, create_graph=True)
        shared = time.perf_counter() - start
        channels, height, width = activation.shape[1:]
        flat = grad.flatten()
        picks = torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(seed))[:entries].tolist()

        def per_entry() -> None:
            for index in picks:
                torch.autograd.grad(flat[index], activation, retain_graph=True)

        per_entry_seconds = timed(per_entry, torch_device) / entries
    total_entries = channels * height * width
    return {"size": size, "layer": layer, "grid": [int(height), int(width)], "channels": int(channels),
            "device": device, "threads": torch.get_num_threads(), "location_batch": location_batch,
            "ours_seconds_per_image": ours, "original_entries_timed": entries,
            "original_seconds_per_entry": per_entry_seconds, "original_entries_per_image": int(total_entries),
            "original_seconds_per_image_extrapolated": shared + per_entry_seconds * total_entries,
            "speedup": (shared + per_entry_seconds * total_entries) / ours}
