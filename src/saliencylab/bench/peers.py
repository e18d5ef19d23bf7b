"""``saliencylab bench peers``: each of our methods beside a peer library's implementation of it.

Peers: Captum, pytorch-grad-cam (PyPI ``grad-cam``) and TorchRay, where installed (torchcam and
Quantus are not: Quantus has no methods of its own and dispatches to Captum). Every pair runs the
same method at the same settings on the same random-weight classifier, images and classes, in one
process: one warm-up call each (whose maps give the agreement, the lowest per-image Pearson
correlation of ours with the peer's, so both do the same work), then ``repeats`` rounds calling
every method and peer once, odd rounds in reverse (``bench.speed.interleaved``); a row gives the
median of the per-round ratios ours / peer and their lowest and highest.

Both sides get the network in the same memory format, with its parameters requiring gradients as
a loaded model has them: ours and TorchRay freeze them during a call, Captum takes gradients
w.r.t. the input only, pytorch-grad-cam backpropagates with ``.backward()`` (so it also computes
the parameters' gradients; it cannot run on frozen ones). pytorch-grad-cam and TorchRay get
``classifier.model`` and normalised images (their masks multiply the normalised input, as ours
fill with the mean colour), Captum the Classifier and [0,1] images. CAMs read the classifier's
``auto`` layer (ResNet-50: ``layer4``). Peers are built inside each timed call (they hook the
network while alive); ours too. CPU only.
"""
from __future__ import annotations

import contextlib
import io
import statistics
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from importlib.util import find_spec

import torch
from torch import Tensor
from tqdm import tqdm

from saliencylab import methods
from saliencylab.bench.speed import interleaved, ratio_spread
from saliencylab.models.classifier import Classifier
from saliencylab.models.zoo import build_classifier

PeerCall = Callable[[Classifier, Tensor, Tensor, dict], Tensor]
"""(classifier, images (B,3,H,W) in [0,1], classes (B,), our hyper-parameters) -> maps (B,H,W)
comparable with ours (the peer's output reduced over RGB as ours is)."""

NOT_COMPARED = {"torchcam": "no pairs written (it was not installed when this was)",
                "quantus": "it has no methods of its own (it dispatches to Captum)"}
"""Peer libraries the benchmark does not time, and why."""

PEER_SETTINGS: dict[str, dict] = {
    "scorecam": {"layer": "layer1.0.conv1"},
    "integrated_gradients": {"steps": 8},
    "occlusion": {"window": 56, "stride": 56},
    "smoothgrad": {"samples": 5, "base_kwargs": {"reduce": "abs"}},
    "rise": {"num_masks": 64, "max_batch": 32},
    "extremal_perturbation": {"areas": (0.1,), "max_iter": 5, "reward": "simple", "select": "sum"},
}
"""Our hyper-parameters per method (others: the defaults), cut so that a ResNet-50 run at 224 px takes
minutes on 2 cores; each peer runs at the same values, and the ratios count per-pass overheads, which
these counts scale alike. Score-CAM reads ResNet's 64-channel ``layer1.0.conv1`` (65 forwards) instead of
``layer4`` (2049); RISE runs 32 masks per forward, TorchRay's batch, so that its masks are TorchRay's;
occlusion slides 16 windows of 56 px; SmoothGrad sums |gradient| over RGB, as Captum's ``Saliency``."""


@dataclass
class PeerRow:
    method: str
    library: str
    seconds_ours: float
    seconds_peer: float
    ratio: float
    ratio_low: float
    ratio_high: float
    agreement: float
    settings: dict


def as_peer(call: Callable[[], Tensor], model: torch.nn.Module) -> Callable[[], Tensor]:
    """``call`` with the peers' warnings and progress bars silenced, and the parameters' ``requires_grad``
    put back afterwards (TorchRay's extremal perturbation leaves them off)."""
    def run() -> Tensor:
        flags = [p.requires_grad for p in model.parameters()]
        try:
            with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
                warnings.simplefilter("ignore")
                return call()
        finally:
            for param, flag in zip(model.parameters(), flags):
                param.requires_grad_(flag)
    return run


def normalised(classifier: Classifier, images: Tensor) -> Tensor:
    """The network's input for pytorch-grad-cam and TorchRay: normalised, in the classifier's memory format."""
    return classifier.normalize(images).contiguous(memory_format=classifier.memory_format)


def grad_cam_library(class_name: str) -> PeerCall:
    """A pytorch-grad-cam CAM class at our ``layer`` (its maps are min-max normalised per image)."""
    def run(classifier: Classifier, images: Tensor, classes: Tensor, settings: dict) -> Tensor:
        import pytorch_grad_cam
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        layer = classifier.layer(settings.get("layer", "auto"))
        with getattr(pytorch_grad_cam, class_name)(model=classifier.model, target_layers=[layer]) as cam:
            cam.batch_size = settings.get("max_batch", 64)  # Score-CAM's forwards per call (ours: max_batch)
            maps = cam(input_tensor=normalised(classifier, images),
                       targets=[ClassifierOutputTarget(int(c)) for c in classes])
        return torch.from_numpy(maps)
    return run


def torchray_grad_cam(classifier: Classifier, images: Tensor, classes: Tensor, settings: dict) -> Tensor:
    from torchray.attribution.grad_cam import grad_cam

    layer = classifier.layer_path(settings.get("layer", "auto"))
    return grad_cam(classifier.model, normalised(classifier, images), classes.tolist(), saliency_layer=layer,
                    resize=True)[:, 0]


def torchray_rise(classifier: Classifier, images: Tensor, classes: Tensor, settings: dict) -> Tensor:
    from torchray.attribution.rise import rise

    maps = rise(classifier.model, normalised(classifier, images), num_masks=settings["num_masks"],
                batch_size=settings.get("max_batch", 64))  # all classes (B,C,H,W)
    return maps[torch.arange(len(classes)), classes]


def torchray_extremal_perturbation(classifier: Classifier, images: Tensor, classes: Tensor, settings: dict) -> Tensor:
    from torchray.attribution import extremal_perturbation as ep

    hyper = {**methods.hyperparameters("extremal_perturbation"), **settings}
    reward = {"simple": ep.simple_reward, "contrastive": ep.contrastive_reward}[hyper["reward"]]
    inputs = normalised(classifier, images)
    return torch.stack([ep.extremal_perturbation(
        classifier.model, inputs[i:i + 1], int(c), areas=list(hyper["areas"]), max_iter=hyper["max_iter"],
        step=hyper["step"], sigma=hyper["sigma"], reward_func=reward, smooth=hyper["smooth"])[0].sum((0, 1))
        for i, c in enumerate(classes.tolist())])


def captum_gradient(captum_class: str, reduce: Callable[[Tensor], Tensor], **options: object) -> PeerCall:
    """A Captum attribution of the [0,1] image with ``options``, reduced over RGB by ``reduce``."""
    def run(classifier: Classifier, images: Tensor, classes: Tensor, settings: dict) -> Tensor:
        from captum import attr

        return reduce(getattr(attr, captum_class)(classifier).attribute(images, target=classes, **options))
    return run


def captum_integrated_gradients(classifier: Classifier, images: Tensor, classes: Tensor, settings: dict) -> Tensor:
    from captum.attr import IntegratedGradients

    hyper = {**methods.hyperparameters("integrated_gradients"), **settings}
    return IntegratedGradients(classifier).attribute(images, target=classes, n_steps=hyper["steps"],
                                                     method=hyper["method"],
                                                     internal_batch_size=hyper["max_batch"]).sum(1)


def captum_occlusion(classifier: Classifier, images: Tensor, classes: Tensor, settings: dict) -> Tensor:
    from captum.attr import Occlusion

    hyper = {**methods.hyperparameters("occlusion"), **settings}
    window, stride = min(hyper["window"], *images.shape[-2:]), hyper["stride"]
    return Occlusion(classifier).attribute(images, sliding_window_shapes=(3, window, window),
                                           strides=(3, stride, stride), target=classes,
                                           baselines=classifier.mean.view(1, 3, 1, 1),
                                           perturbations_per_eval=hyper["max_batch"])[:, 0]


def captum_smoothgrad(classifier: Classifier, images: Tensor, classes: Tensor, settings: dict) -> Tensor:
    from captum.attr import NoiseTunnel, Saliency

    hyper = {**methods.hyperparameters("smoothgrad"), **settings}
    return NoiseTunnel(Saliency(classifier)).attribute(images, nt_type="smoothgrad", nt_samples=hyper["samples"],
                                                       stdevs=hyper["noise"], target=classes).sum(1)


def max_abs(values: Tensor) -> Tensor:
    return values.abs().amax(1)


def signed(values: Tensor) -> Tensor:
    return values.sum(1)


PEERS: dict[tuple[str, str], PeerCall] = {
    ("gradcam", "pytorch-grad-cam"): grad_cam_library("GradCAM"),
    ("gradcam", "torchray"): torchray_grad_cam,
    ("gradcam_pp", "pytorch-grad-cam"): grad_cam_library("GradCAMPlusPlus"),
    ("scorecam", "pytorch-grad-cam"): grad_cam_library("ScoreCAM"),
    ("xgradcam", "pytorch-grad-cam"): grad_cam_library("XGradCAM"),
    ("layercam", "pytorch-grad-cam"): grad_cam_library("LayerCAM"),
    ("gradient", "captum"): captum_gradient("Saliency", max_abs, abs=True),
    ("input_x_gradient", "captum"): captum_gradient("InputXGradient", signed),
    ("integrated_gradients", "captum"): captum_integrated_gradients,
    ("guided_backprop", "captum"): captum_gradient("GuidedBackprop", max_abs),
    ("deconvnet", "captum"): captum_gradient("Deconvolution", max_abs),
    ("occlusion", "captum"): captum_occlusion,
    ("smoothgrad", "captum"): captum_smoothgrad,
    ("rise", "torchray"): torchray_rise,
    ("extremal_perturbation", "torchray"): torchray_extremal_perturbation,
}
"""(our method, peer library) -> the peer's call at our settings. SmoothGrad's noise is drawn by
each side from its own generator, so its agreement is that of two independent 10-sample estimates."""

MODULES = {"captum": "captum", "pytorch-grad-cam": "pytorch_grad_cam", "torchray": "torchray"}


def peer_methods() -> list[str]:
    """Our methods that have a peer, in table order."""
    return list(dict.fromkeys(method for method, _ in PEERS))


def pearson(ours: Tensor, theirs: Tensor) -> float:
    """Lowest per-image Pearson correlation of maps (B,H,W); NaN when a map is constant."""
    pairs = torch.stack([ours.detach().flatten(1), theirs.detach().flatten(1)], dim=1).double()
    return min(float(torch.corrcoef(pair)[0, 1]) for pair in pairs)


def run_peers(model: str = "resnet50", size: int = 224, batch: int = 1, names: Sequence[str] | None = None,
              repeats: int = 3, channels_last: bool = False, settings: dict[str, dict] | None = None,
              num_classes: int = 1000, progress: Callable[[str], None] = print,
              show_progress: bool = True) -> list[PeerRow]:
    """Time ``names`` (default: every method with a peer) beside their installed peers.

    ``model`` (random weights) at ``size`` px, ``batch`` images with random classes; ``settings``
    override :data:`PEER_SETTINGS` per method. One warm-up call each, then ``repeats`` (>= 3)
    interleaved rounds; ``show_progress``: a progress bar of the calls.
    """
    if repeats < 3:
        raise ValueError(f"repeats must be >= 3 (a median and a spread), got {repeats}")
    names = list(names or peer_methods())
    unknown = [name for name in names if name not in peer_methods()]
    if unknown:
        raise ValueError(f"no peer implementation for {', '.join(unknown)}; methods with a peer: "
                         f"{', '.join(peer_methods())}")
    for library, reason in NOT_COMPARED.items():
        installed = "installed" if find_spec(library) is not None else "not installed"
        progress(f"{library}: {installed}, not compared: {reason}")
    pairs = [(m, lib) for m, lib in PEERS if m in names and find_spec(MODULES[lib]) is not None]
    missing = sorted({lib for m, lib in PEERS if m in names and find_spec(MODULES[lib]) is None})
    if missing:
        progress(f"skipped (not installed): {', '.join(missing)}")
    torch.manual_seed(0)
    classifier = build_classifier(model, num_classes).eval().requires_grad_(True)
    if channels_last:
        classifier.use_channels_last()
    images = torch.rand(batch, 3, size, size)
    classes = torch.randint(num_classes, (batch,))
    chosen = {m: {**PEER_SETTINGS.get(m, {}), **(settings or {}).get(m, {})} for m in names}

    def ours(name: str) -> Tensor:
        return methods.build(name, classifier, **chosen[name]).attribute(images, classes)[:, 0]

    calls: dict[str, Callable[[], Tensor]] = {}
    for m, lib in pairs:  # each method just before its peers
        calls.setdefault(m, partial(ours, m))
        calls[f"{m} {lib}"] = as_peer(partial(PEERS[m, lib], classifier, images, classes, chosen[m]), classifier)
    bar = tqdm(total=len(calls) * (1 + repeats), desc="bench peers (warm-up, then rounds)", unit="call",
               disable=not show_progress)

    def counted(call: Callable[[], Tensor]) -> Callable[[], Tensor]:
        return lambda: (call(), bar.update())[0]

    calls = {name: counted(call) for name, call in calls.items()}
    outputs = {name: call() for name, call in calls.items()}  # the warm-up; its maps give the agreement
    times = interleaved(calls, torch.device("cpu"), repeats)
    bar.close()
    rows = []
    for m, lib in pairs:
        key = f"{m} {lib}"
        row = PeerRow(m, lib, statistics.median(times[m]), statistics.median(times[key]),
                      *ratio_spread(times[m], times[key]), pearson(outputs[m], outputs[key]), chosen[m])
        rows.append(row)
        progress(format_row(row))
    return rows


def format_row(row: PeerRow) -> str:
    return (f"{row.method:22s} {row.library:17s} {row.seconds_ours:9.3f} {row.seconds_peer:9.3f} "
            f"{row.ratio:6.2f} {row.ratio_low:5.2f}–{row.ratio_high:<5.2f} {row.agreement:9.4f}")


HEADER = (f"{'method':22s} {'peer':17s} {'ours s':>9s} {'peer s':>9s} {'ratio':>6s} {'spread':11s} "
          f"{'agreement':>9s}")
