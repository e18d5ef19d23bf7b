"""The hardness predictor of deliberative explanations (Wang & Vasconcelos, NeurIPS 2019; from Wang & Vasconcelos,
"Towards Realistic Predictors", ECCV 2018): a network apart from the classifier that scores how hard an image is.

Trunk: a copy of the classifier's network with its last linear layer replaced by Linear(in, ``hidden``) (the
original: VGG16-BN's last FC -> 1000). Head: BN1d -> ReLU -> Dropout -> FC hidden->hidden -> BN -> ReLU -> Dropout
-> FC hidden->100 -> BN -> ReLU -> Dropout -> FC 100->1. ``forward`` returns the pre-sigmoid score (N,1); its
sigmoid is the hardness in (0,1).
"""
from __future__ import annotations

import copy

from torch import Tensor, nn

from saliencylab.models.classifier import Classifier

HIDDEN = 1000
BOTTLENECK = 100
DROPOUT = 0.3
"""The review-time scripts' dropout (the official training head uses 0.5)."""


def _replace_last_linear(model: nn.Module, out_features: int) -> None:
    """Swap the last ``nn.Linear`` of ``model`` (in module order) for a fresh Linear(in, ``out_features``)."""
    linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise ValueError("the classifier has no nn.Linear layer to turn into the hardness predictor's trunk output")
    parent_name, _, child = linears[-1].rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, nn.Linear(getattr(parent, child).in_features, out_features))


class HardnessPredictor(nn.Module):
    """Trunk (the classifier's network, its last FC -> ``hidden``) + the MLP head; (N,3,H,W) normalised -> (N,1)."""

    def __init__(self, network: nn.Module, hidden: int = HIDDEN, dropout: float = DROPOUT) -> None:
        super().__init__()
        self.trunk = copy.deepcopy(network)
        _replace_last_linear(self.trunk, hidden)
        self.trunk.requires_grad_(True)
        self.head = nn.Sequential(
            nn.BatchNorm1d(hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, hidden),
            nn.BatchNorm1d(hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, BOTTLENECK),
            nn.BatchNorm1d(BOTTLENECK), nn.ReLU(), nn.Dropout(dropout), nn.Linear(BOTTLENECK, 1),
        )

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.trunk(images))


def hardness_classifier(predictor: HardnessPredictor, classifier: Classifier) -> Classifier:
    """The predictor wrapped like ``classifier`` (same normalisation; its named layers under ``trunk.``), so its
    score can be attributed at the same layer names as the classifier's. Output (N,1): the pre-sigmoid score."""
    layers = {name: f"trunk.{path}" for name, path in classifier.layers.items()}
    if not layers:
        layers = {"auto": f"trunk.{classifier.layer_path('auto')}"}
    return Classifier(predictor, classifier.mean.tolist(), classifier.std.tolist(), layers=layers)
