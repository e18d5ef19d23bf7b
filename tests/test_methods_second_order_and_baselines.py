"""gradient_hessian against the full Hessian, and the model-free baselines."""
import torch
from torch import nn

from saliencylab import Classifier, methods
from saliencylab.methods.hessian import location_quadratic_forms
from saliencylab.models.classifier import Layout


class SmoothHead(nn.Module):
    """features (1x1 conv) -> a non-linear head that mixes locations: S_c = Σ_j v_cj · tanh(w_j · A.flatten())."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(3)
        self.features = nn.Conv2d(3, 2, 1)
        self.hidden = nn.Linear(2 * 3 * 3, 5)
        self.out = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.hidden(self.features(self.pool(x)).flatten(1))))


def test_location_quadratic_forms_equal_the_full_hessians_diagonal_blocks():
    torch.manual_seed(0)
    head = nn.Sequential(nn.Flatten(), nn.Linear(2 * 3 * 3, 4), nn.Tanh(), nn.Linear(4, 1))
    activation = torch.randn(1, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    head = head.double()
    score = head(activation).sum()
    grad, quadratic = location_quadratic_forms(score, activation, Layout("nchw"), location_batch=4)
    full = torch.autograd.functional.hessian(lambda a: head(a).sum(), activation.detach()).view(2, 9, 2, 9)
    values = activation.detach().view(2, 9)
    expected = torch.stack([values[:, l] @ full[:, l, :, l] @ values[:, l] for l in range(9)]).view(3, 3)
    torch.testing.assert_close(quadratic[0], expected)
    torch.testing.assert_close(grad, torch.autograd.grad(head(activation).sum(), activation)[0])


def test_gradient_hessian_map_by_hand():
    torch.manual_seed(1)
    model = SmoothHead()
    classifier = Classifier(model, (0, 0, 0), (1, 1, 1), layers={"features": "features"})
    images = torch.rand(1, 3, 3, 3)
    method = methods.build("gradient_hessian", classifier, max_batch=2)
    maps = method.attribute(images, 1)[0, 0]
    with torch.no_grad():
        activation = model.features(images)

    def score(a: torch.Tensor) -> torch.Tensor:
        return model.out(torch.tanh(model.hidden(a.flatten(1))))[0, 1]

    a = activation.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(score(a), a)
    full = torch.autograd.functional.hessian(score, activation).view(2, 9, 2, 9)
    values = activation.view(2, 9)
    quadratic = torch.stack([values[:, l] @ full[:, l, :, l] @ values[:, l] for l in range(9)]).view(3, 3)
    expected = (activation[0] * g[0].clamp_min(0)).sum(0) + 0.5 * quadratic.abs()
    torch.testing.assert_close(maps, expected, atol=1e-6, rtol=1e-5)
    unclipped = methods.build("gradient_hessian", classifier, clip_gradient=False).attribute(images, 1)[0, 0]
    torch.testing.assert_close(unclipped, (activation[0] * g[0]).sum(0) + 0.5 * quadratic.abs(), atol=1e-6, rtol=1e-5)
    assert method.passes(3, 3).backward == 1 + 2 * 9


def test_baselines():
    classifier = Classifier(nn.Sequential(nn.Flatten(), nn.Linear(3 * 9 * 11, 3)))
    images = torch.rand(2, 3, 9, 11)
    center = methods.build("center", classifier).attribute(images, 0)
    assert center[0, 0].argmax() == 4 * 11 + 5 and torch.equal(center[0], center[1])
    assert (methods.build("constant", classifier, value=1.0).attribute(images, 2) == 1).all()
    first = methods.build("random", classifier, seed=3).attribute(images, torch.tensor([[0, 1], [2, -1]]))
    assert torch.equal(first[0, 0], first[0, 1]) and torch.equal(first[0, 0], first[1, 0])
    assert first[1, 1].isnan().all()
    other = methods.build("random", classifier, seed=4).attribute(images, 0)
    assert not torch.equal(first[0, 0], other[0, 0])
