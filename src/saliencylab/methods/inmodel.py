"""The in-model explainer's map as a Method: ``inmodel`` (Rio-Torto et al., "Understanding the decisions of CNNs:
an in-model approach", Pattern Recognition Letters 2020).

The map ẑ (B,1,H,W) in [0,1) of the explainer trained jointly with its classifier is the map of every target
(class-agnostic). The network comes from ``checkpoint``, a folder written by
:func:`saliencylab.training.inmodel.fit_inmodel`, from ``network``, an in-memory
:class:`~saliencylab.models.inmodel.InModelNet`, or, with neither, from the bound classifier when that is
itself an in-model network (the usual case: the engine scores the in-model model as the classifier and its
map as a method).
"""
from __future__ import annotations

import torch
from torch import Tensor

from saliencylab.methods.base import Method, Passes, register, scoped_eval
from saliencylab.models.classifier import Classifier
from saliencylab.models.inmodel import InModelNet
from saliencylab.models.load import load_trained_classifier
from saliencylab.targets import check_class_range


@register("inmodel")
class InModelMethod(Method):
    """The in-model explainer's map; see the module docstring. Class-agnostic, in [0,1)."""

    output_range = "unit"
    per_class = False
    trained = True

    def __init__(self, classifier: Classifier, *, checkpoint: str | None = None, network: InModelNet | None = None,
                 max_batch: int = 64) -> None:
        super().__init__(classifier, max_batch=max_batch)
        if checkpoint is not None and network is not None:
            raise ValueError("method 'inmodel' takes checkpoint= or network=, not both")
        self.checkpoint, self.network = checkpoint, network
        if checkpoint is not None:
            self._source = load_trained_classifier(checkpoint)[0]
        elif network is not None:  # fed [0,1] images, as the original
            self._source = Classifier(network, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
        else:
            self._source = classifier
        if not isinstance(self._source.model, InModelNet):
            raise ValueError("method 'inmodel' needs an in-model network: pass checkpoint=<folder written by "
                             "saliencylab.training.inmodel.fit_inmodel> (or network=<InModelNet>), or bind it to "
                             "an in-model classifier")

    def attribute_targets(self, images: Tensor, targets: Tensor) -> Tensor:
        source = self._source.to(images.device)
        check_class_range(targets, source.model.num_classes)
        with scoped_eval(source), torch.no_grad():
            explanation = self.explanation(images).float()
        return explanation.expand(-1, targets.shape[1], -1, -1).clone()

    def passes(self, height: int, width: int) -> Passes:
        """One explainer forward per image serves every target; the classifier does not run."""
        return Passes(forward=1, backward=0, network=self.explanation)

    def explanation(self, images: Tensor) -> Tensor:
        """The in-model explainer's map (B,1,H,W) in [0,1] of images (B,3,H,W) in [0,1]."""
        return self._source.model.explain(self._source.normalize(images))
