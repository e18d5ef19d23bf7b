"""``saliencylab bench scale``: what one more process buys, what each output store costs, and what explaining
ImageNet val would take.

Three measurements on this machine, all with synthetic images and random-weight networks (nothing downloaded):

- **processes**: ``explain`` images/s (gradient maps of the demo CNN) and training samples/s (the classifier
  scheme through :func:`~saliencylab.training.fit.fit_module`) at each process count, through the same
  :class:`~saliencylab.scale.Scale` the commands take (``ddp_forkserver`` by default; its server is started
  before the clock runs, so the seconds that importing torch takes are not counted as work);
- **stores**: bytes per map and maps/s of ``explain --store files|chunks --dtype float32|float16`` (Grad-CAM of
  the demo CNN at 224 px: its maps are smooth, as most methods' are);
- **ImageNet val**: seconds of one ResNet-50 forward and backward per 224 px image here, times each method's
  declared least passes at its paper settings (``method.passes``), times 50 000 images, divided by the measured
  explain speed-up of the largest process count. A lower bound: the ratios of ``bench speed`` say how much
  above the least work each method runs.
"""
from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch

from saliencylab import methods
from saliencylab.bench.export import explain_on_ranks
from saliencylab.bench.speed import timed, unit_passes
from saliencylab.data.module import SaliencyDataModule
from saliencylab.data.synthetic import CLASSES, SyntheticConfig, generate
from saliencylab.models.zoo import build_classifier
from saliencylab.scale import FORKSERVER, Scale, lightning_strategy
from saliencylab.training.classifier import ClassifierModule
from saliencylab.training.fit import fit_module

IMAGENET_VAL = 50_000
FAMILIES = {
    "gradients (gradient, input×gradient, guided backprop, deconvnet)": "gradient",
    "CAMs (Grad-CAM, Grad-CAM++, XGrad-CAM, LayerCAM)": "gradcam",
    "trained explainers and maskers (one network forward, taken as one classifier forward)": "cam",
    "Score-CAM (one forward per channel of the last layer)": "scorecam",
    "integrated gradients (50 steps)": "integrated_gradients",
    "SmoothGrad (50 samples)": "smoothgrad",
    "occlusion (windows of the paper's stride)": "occlusion",
    "RISE (8000 masks)": "rise",
    "meaningful perturbation (300 iterations)": "meaningful_perturbation",
    "extremal perturbation (4 areas × 800 iterations)": "extremal_perturbation",
    "IGOS++": "igos_pp",
}
"""Method family -> the method whose declared passes stand for it in the ImageNet estimate."""


def _dataset(images: int, size: int, seed: int = 0) -> list:
    return generate(SyntheticConfig(image_size=size, train=images, val=1, test=1, seed=seed))["train"]


def explain_speed(processes: int, strategy: str, images: int, size: int, out_dir: Path) -> float:
    """Images/s of ``explain gradient`` (demo CNN, random weights) over ``processes`` ranks, start-up included."""
    torch.manual_seed(0)
    classifier = build_classifier("small_cnn", len(CLASSES), class_names=CLASSES, width=16)
    samples = _dataset(images, size)
    start = time.perf_counter()
    explain_on_ranks(Scale(devices=processes, strategy=strategy), "gradient", classifier, samples, out_dir,
                     batch_size=8, progress=False, store="chunks")
    return images / (time.perf_counter() - start)


def training_speed(processes: int, strategy: str, images: int, size: int, out_dir: Path, epochs: int = 2) -> float:
    """Training samples/s of the classifier scheme (demo CNN, batch 16, ``epochs`` epochs, no validation)."""
    torch.manual_seed(0)
    module = ClassifierModule(arch="small_cnn", num_classes=len(CLASSES), width=16, freeze_backbone=False)
    datamodule = SaliencyDataModule(_dataset(images, size, seed=1), batch_size=16)
    start = time.perf_counter()
    fit_module(module, datamodule, out_dir, max_epochs=epochs, monitor=None, progress=False, accelerator="cpu",
               scale=Scale(devices=processes, strategy=strategy))
    return epochs * images / (time.perf_counter() - start)


def store_costs(images: int, out_dir: Path, size: int = 224) -> list[dict]:
    """Bytes per map and maps/s (explaining included) of each store and dtype, one process."""
    torch.manual_seed(0)
    classifier = build_classifier("small_cnn", len(CLASSES), class_names=CLASSES, width=16)
    samples = _dataset(images, size)
    rows = []
    for store in ("files", "chunks"):
        for dtype in ("float32", "float16"):
            folder = out_dir / f"{store}_{dtype}"
            start = time.perf_counter()
            manifest = explain_on_ranks(Scale(), "gradcam", classifier, samples, folder, batch_size=16,
                                        progress=False, store=store, dtype=dtype)
            seconds = time.perf_counter() - start
            maps = sum(len([t for t in entry["targets"] if t >= 0]) for entry in manifest["images"].values())
            stored = sum(p.stat().st_size for p in folder.rglob("*.npz"))
            rows.append({"store": store, "dtype": dtype, "maps": maps, "bytes_per_map": stored / maps,
                         "maps_per_second": maps / seconds, "files": len(list(folder.rglob("*.npz")))})
    return rows


def imagenet_estimate(speedup: float, batch: int = 2, repeats: int = 3) -> dict:
    """Seconds of one ResNet-50 forward and backward per 224 px image here (median of ``repeats``), and hours of
    explaining ImageNet val per method family at one process and at the measured ``speedup``."""
    torch.manual_seed(0)
    classifier = build_classifier("resnet50", 1000).eval()
    images = torch.rand(batch, 3, 224, 224)
    forward, forward_backward = unit_passes(classifier, images)
    cpu = torch.device("cpu")
    times = [(timed(forward, cpu), timed(forward_backward, cpu)) for _ in range(repeats)]
    f = statistics.median(t[0] for t in times) / batch
    b = max(statistics.median(t[1] for t in times) / batch - f, 0.0)
    families = {}
    for family, name in FAMILIES.items():
        passes = methods.build(name, classifier).passes(224, 224)
        seconds = IMAGENET_VAL * (passes.forward * f + passes.backward * b)
        families[family] = {"method": name, "forward": passes.forward, "backward": passes.backward,
                            "hours_one_process": seconds / 3600, "hours_scaled": seconds / speedup / 3600}
    return {"forward_seconds": f, "backward_seconds": b, "speedup": speedup, "families": families}


def run_scale(processes: tuple[int, ...] = (1, 2), strategy: str = FORKSERVER, images: int = 64, size: int = 64,
              store_images: int = 32, out_dir: str | Path | None = None) -> dict:
    """All three measurements (see the module docstring); work files go to ``out_dir`` (default: a temporary one)."""
    if strategy == FORKSERVER and max(processes) > 1:  # start the server (importing torch) before the clock runs
        import multiprocessing

        lightning_strategy(strategy)  # sets what the server preloads
        first = multiprocessing.get_context("forkserver").Process(target=int)
        first.start()
        first.join()
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(out_dir or scratch)
        explain_speed(1, strategy, 8, size, work / "warm_up_explain")  # first calls load code and fill caches
        training_speed(1, strategy, 16, size, work / "warm_up_train", epochs=1)
        speeds = [{"processes": p, "explain_images_per_second": explain_speed(p, strategy, images, size,
                                                                              work / f"explain_{p}"),
                   "train_samples_per_second": training_speed(p, strategy, images, size, work / f"train_{p}")}
                  for p in processes]
        stores = store_costs(store_images, work / "stores")
    speedup = speeds[-1]["explain_images_per_second"] / speeds[0]["explain_images_per_second"]
    return {"strategy": strategy, "images": images, "image_size": size, "processes": speeds, "stores": stores,
            "imagenet_val": imagenet_estimate(speedup)}


def scale_tables(result: dict) -> str:
    """The three measurements as Markdown tables."""
    lines = ["| processes | explain images/s | training samples/s |", "|---:|---:|---:|"]
    lines += [f"| {r['processes']} | {r['explain_images_per_second']:.1f} | {r['train_samples_per_second']:.1f} |"
              for r in result["processes"]]
    lines += ["", "| store | dtype | bytes/map | maps/s | files |", "|---|---|---:|---:|---:|"]
    lines += [f"| {r['store']} | {r['dtype']} | {r['bytes_per_map']:.0f} | {r['maps_per_second']:.1f} | {r['files']} |"
              for r in result["stores"]]
    estimate = result["imagenet_val"]
    lines += ["", f"ImageNet val (50 000 images, ResNet-50 at 224 px): forward {estimate['forward_seconds'] * 1e3:.0f} "
                  f"ms/image, backward {estimate['backward_seconds'] * 1e3:.0f} ms/image here; "
                  f"{estimate['speedup']:.2f}× with {result['processes'][-1]['processes']} processes", "",
              f"| family | least passes (forward + backward) | hours, 1 process | hours, "
              f"{result['processes'][-1]['processes']} processes |", "|---|---:|---:|---:|"]
    lines += [f"| {family} | {e['forward']:g} + {e['backward']:g} | {e['hours_one_process']:.3g} | "
              f"{e['hours_scaled']:.3g} |" for family, e in estimate["families"].items()]
    return "\n".join(lines) + "\n"
