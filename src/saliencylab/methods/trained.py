"""Trained explainers as Methods: ``explainer`` (NN-Explainer), ``rt_saliency`` and ``fcnn``
(Stalder et al., 'What You See is What You Classify: Black Box Attributions', NeurIPS 2022).

One forward of the explainer network per image gives the logits S of every class; the map of
target c is the per-class mask sigmoid(S_c) in [0,1] (``mode='classes'`` in the authors' released code), at input
resolution. The network comes from ``checkpoint``, a directory written by
:func:`saliencylab.training.explainer.fit_explainer` (whose variant must match the method), or
from ``explainer``, an in-memory ``nn.Module`` mapping images normalised like the classifier's
to (B,C,H,W) logits. The classifier itself is never run (for ``fcnn`` the network is its own
classifier); its normalisation is used for an in-memory network, the checkpoint's otherwise.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from saliencylab.methods.base import Method, Passes, register, scoped_eval
from saliencylab.models.classifier import Classifier
from saliencylab.models.explainer import load_trained_explainer
from saliencylab.targets import check_class_range


class TrainedExplainer(Method):
    """Per-class masks sigmoid(S_c) of a trained explainer network; see the module docstring."""

    variant = "explainer"
    output_range = "unit"
    trained = True

    def __init__(self, classifier: Classifier, *, checkpoint: str | None = None, explainer: nn.Module | None = None,
                 max_batch: int = 64) -> None:
        super().__init__(classifier, max_batch=max_batch)
        if (checkpoint is None) == (explainer is None):
            raise ValueError(f"method {self.name!r} needs a trained explainer: pass checkpoint=<directory written by "
                             "saliencylab.training.explainer.fit_explainer> (or explainer=<nn.Module>), "
                             "exactly one of them")
        self.checkpoint = checkpoint
        self.explainer = explainer
        self._mean: Tensor | None = None
        self._std: Tensor | None = None
        if checkpoint is not None:
            network, description = load_trained_explainer(checkpoint)
            if description.get("variant") != self.variant:
                raise ValueError(f"checkpoint {checkpoint} holds a {description.get('variant')!r} explainer, "
                                 f"not a {self.variant!r} one; use method {description.get('variant')!r}")
            known = classifier.num_classes
            if known is not None and known != int(description["num_classes"]):
                raise ValueError(f"checkpoint {checkpoint} explains {description['num_classes']} classes but the "
                                 f"classifier has {known}")
            self._network = network
            self._mean = torch.tensor(description["mean"], dtype=torch.float32).view(1, 3, 1, 1)
            self._std = torch.tensor(description["std"], dtype=torch.float32).view(1, 3, 1, 1)
        else:
            if not isinstance(explainer, nn.Module):
                raise TypeError(f"explainer must be an nn.Module, got {type(explainer).__name__}")
            self._network = explainer

    def _normalize(self, images: Tensor) -> Tensor:
        if self._mean is None:
            return self.classifier.normalize(images)
        return (images - self._mean.to(images.device)) / self._std.to(images.device)

    def attribute_targets(self, images: Tensor, targets: Tensor) -> Tensor:
        network = self._network
        param = next(network.parameters(), None)
        if param is not None and param.device != images.device:
            network.to(images.device)
        maps = torch.zeros((*targets.shape, *images.shape[-2:]), dtype=torch.float32, device=images.device)
        with scoped_eval(network), torch.no_grad():
            for start in range(0, images.shape[0], self.max_batch):
                rows = slice(start, start + self.max_batch)
                logits = self.network_logits(images[rows])
                wanted = targets[rows]
                check_class_range(wanted, logits.shape[1], "an explainer")
                index = wanted.clamp(min=0)[..., None, None].expand(-1, -1, *logits.shape[-2:])
                maps[rows] = logits.gather(1, index).float().sigmoid()
        return maps

    def network_logits(self, images: Tensor) -> Tensor:
        """The explainer network's per-class logits S (B,C,H,W) of images (B,3,H,W) in [0,1]."""
        return self._network(self._normalize(images))

    def passes(self, height: int, width: int) -> Passes:
        """One explainer-network forward per image serves every target; no classifier pass, no backward."""
        return Passes(forward=1, backward=0, network=self.network_logits)


@register("explainer")
class NNExplainer(TrainedExplainer):
    """NN-Explainer masks (Stalder et al. 2022)."""

    variant = "explainer"


@register("rt_saliency")
class RTSaliency(TrainedExplainer):
    """The adapted Real-Time-Saliency explainer (Stalder et al. 2022)."""

    variant = "rt_saliency"


@register("fcnn")
class SelfExplainingFCNN(TrainedExplainer):
    """The self-explaining InterpretableFCNN (Stalder et al. 2022); the network is its own classifier."""

    variant = "fcnn"
