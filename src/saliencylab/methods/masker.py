"""A trained CASME masker as a Method: ``masker``
(Phang et al., 'Investigating and Simplifying Masking-based Saliency Methods for Model Interpretability', 2020).

One classifier forward per image gives the features the masker reads; its mask (B,1,H,W) in [0,1]
is the map of every target (class-agnostic), unless the masker was trained with class-embedding
channels, where each target gets its own mask. The masker comes from ``checkpoint``, a directory
written by :func:`saliencylab.training.masker.fit_masker`, or from ``masker``, an in-memory
:class:`~saliencylab.models.masker.Masker` reading the bound classifier's layers. The features come
from the classifier the masker was trained with: for a CA checkpoint its co-trained classifier
(stored in the checkpoint directory), otherwise the bound classifier.
"""
from __future__ import annotations

import torch
from torch import Tensor

from saliencylab.methods.base import Method, Passes, register, scoped_eval
from saliencylab.models.classifier import Classifier
from saliencylab.models.load import load_trained_classifier
from saliencylab.models.masker import Masker, classifier_features, load_trained_masker
from saliencylab.targets import check_class_range


@register("masker")
class MaskerMethod(Method):
    """CASME masks; see the module docstring. ``area``: the target area fed to maskers trained with an
    area-prior channel (unused otherwise); ``logits=True``: the pre-sigmoid head logits (nearest-upsampled),
    the values the original's sanity checks compared (Phang et al. 2020); ``bench.sanity`` compares maps in
    [0,1], so use the default sigmoid masks there (Spearman ranks are the same either way).
    Class-agnostic unless the masker has class-embedding channels."""

    output_range = "unit"  # "raw" with logits=True
    per_class = False
    trained = True

    def __init__(self, classifier: Classifier, *, checkpoint: str | None = None, masker: Masker | None = None,
                 area: float = 0.5, logits: bool = False, max_batch: int = 64) -> None:
        super().__init__(classifier, max_batch=max_batch)
        if (checkpoint is None) == (masker is None):
            raise ValueError("method 'masker' needs a trained masker: pass checkpoint=<directory written by "
                             "saliencylab.training.masker.fit_masker> (or masker=<Masker>), exactly one of them")
        self.checkpoint, self.masker, self.area, self.logits = checkpoint, masker, area, logits
        self.output_range = "raw" if logits else "unit"
        self._features_from = classifier
        if checkpoint is not None:
            network, description = load_trained_masker(checkpoint)
            known = classifier.num_classes
            if known is not None and known != int(description["num_classes"]):
                raise ValueError(f"checkpoint {checkpoint} explains {description['num_classes']} classes but the "
                                 f"classifier has {known}")
            if description["mode"] == "ca":
                self._features_from = load_trained_classifier(checkpoint)[0]
            self._network = network
        else:
            if not isinstance(masker, Masker):
                raise TypeError(f"masker must be a saliencylab.models.masker.Masker, got {type(masker).__name__}")
            self._network = masker
        self.per_class = bool(self._network.class_embedding)

    def attribute_targets(self, images: Tensor, targets: Tensor) -> Tensor:
        network, source = self._network, self._features_from
        for module in (network, source) if source is not self.classifier else (network,):
            param = next(module.parameters(), None)
            if param is not None and param.device != images.device:
                module.to(images.device)
        size = images.shape[-2:]
        maps = torch.zeros((*targets.shape, *size), dtype=torch.float32, device=images.device)
        with scoped_eval(network), scoped_eval(source), torch.no_grad():
            for start in range(0, images.shape[0], self.max_batch):
                rows = slice(start, start + self.max_batch)
                scores, features = classifier_features(source, source.normalize(images[rows]), network.layers)
                wanted = targets[rows]
                check_class_range(wanted, scores.shape[1])
                area = torch.full((scores.shape[0],), self.area, device=images.device)
                if network.class_embedding:
                    for slot in range(wanted.shape[1]):
                        maps[rows, slot] = network(features, size, area=area, classes=wanted[:, slot].clamp(min=0),
                                                   logits=self.logits)[:, 0].float()
                else:
                    maps[rows] = network(features, size, area=area, logits=self.logits).float().expand_as(maps[rows])
        return maps

    def passes(self, height: int, width: int) -> Passes:
        """One classifier forward (and one masker forward) per image serves every target; no backward."""
        return Passes(forward=1, backward=0)
