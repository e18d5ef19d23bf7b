"""Gradient family: input × gradient, integrated gradients, SmoothGrad, guided backprop, deconvnet, guided Grad-CAM.

Known answers on linear models and a hand-computable ReLU MLP; agreement with Captum (and TorchRay)
on small ReLU CNNs that take [0,1] images (the Classifier itself is the forward function).
"""
import copy

import pytest
import torch
from captum import attr as captum_attr
from torch import nn
from torchvision.transforms.functional import gaussian_blur

from saliencylab import Classifier, methods
from saliencylab.methods.backprop import relu_backward_rule
from saliencylab.methods.gradient import reduce_channels
from saliencylab.models.zoo import SmallCNN

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)
QUADRATURES = ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid")


def linear_classifier(size: int = 8) -> tuple[Classifier, torch.Tensor]:
    """A linear model on normalised images and its gradient w.r.t. the [0,1] image, (3 classes, 3, size, size)."""
    torch.manual_seed(0)
    linear = nn.Linear(3 * size * size, 3)
    weights = linear.weight.detach().view(3, 3, size, size) / torch.tensor(STD).view(1, 3, 1, 1)
    return Classifier(nn.Sequential(nn.Flatten(), linear), MEAN, STD), weights


def small_cnn(inplace: bool = False) -> Classifier:
    torch.manual_seed(0)
    model = SmallCNN(4, width=4)
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        bn.running_mean.uniform_(-0.1, 0.1)
        bn.running_var.uniform_(0.5, 1.5)
    for relu in (m for m in model.modules() if isinstance(m, nn.ReLU)):
        relu.inplace = inplace
    return Classifier(model, MEAN, STD, layers={"features": "features"}).eval()


def test_input_x_gradient_of_linear_model_and_captum():
    classifier, weights = linear_classifier()
    images = torch.rand(2, 3, 8, 8)
    maps = methods.build("input_x_gradient", classifier).attribute(images, torch.tensor([2, 0]))
    torch.testing.assert_close(maps[:, 0], (images * weights[[2, 0]]).sum(1))
    cnn, images = small_cnn(), torch.rand(3, 3, 32, 32)
    reference = captum_attr.InputXGradient(cnn).attribute(images, target=torch.tensor([0, 3, 1]))
    for reduce in ("signed", "max_abs", "abs"):
        maps = methods.build("input_x_gradient", cnn, reduce=reduce).attribute(images, torch.tensor([0, 3, 1]))
        torch.testing.assert_close(maps[:, 0], reduce_channels(reference, reduce), atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("quadrature", QUADRATURES)
def test_integrated_gradients_of_linear_model_is_exact_and_complete(quadrature):
    classifier, weights = linear_classifier()
    images = torch.rand(2, 3, 8, 8)
    user = torch.rand(3, 8, 8)
    blurred = methods.build("integrated_gradients", classifier, baseline="blur").baselines(images)
    for baseline, expected in [("black", torch.zeros(3, 8, 8)), ("mean", torch.tensor(MEAN).view(3, 1, 1)),
                               (user, user), (user[None], user)]:
        method = methods.build("integrated_gradients", classifier, steps=3, method=quadrature, baseline=baseline)
        maps, delta = method.attribute_with_delta(images, torch.tensor([[1, 2], [0, -1]]))
        torch.testing.assert_close(maps[0, 1], ((images[0] - expected) * weights[2]).sum(0))
        torch.testing.assert_close(maps[1, 0], ((images[1] - expected) * weights[0]).sum(0))
        assert delta[0].abs().max() < 1e-4 and delta[1, 0].abs() < 1e-4 and delta[1, 1].isnan()
    blur = methods.build("integrated_gradients", classifier, steps=3, method=quadrature, baseline="blur")
    torch.testing.assert_close(blur.attribute(images, 1)[:, 0], ((images - blurred) * weights[1]).sum(1))


def test_blur_baseline_is_a_gaussian_blur_and_baseline_errors():
    classifier, _ = linear_classifier(size=4)
    flat = torch.full((1, 3, 4, 4), 0.3)
    blur = methods.build("integrated_gradients", classifier, baseline="blur", blur_sigma=2.0)
    torch.testing.assert_close(blur.baselines(flat), flat)  # a constant image is its own blur
    image = torch.zeros(1, 3, 4, 4)
    image[..., 1, 1] = 1.0
    blurred = blur.baselines(image)
    assert blurred[..., 1, 1].max() < 1 and blurred.min() > 0
    torch.testing.assert_close(blurred, gaussian_blur(image, [7, 7], [2.0, 2.0]))  # kernel 13 capped to 2·3+1
    for bad, match in [("white", "baseline must be one of"), (torch.rand(4, 4), r"shape \(3,H,W\)"),
                       (torch.rand(2, 3, 4, 4), r"shape \(3,H,W\)"), (torch.rand(3, 4, 4) * 255, r"in \[0,1\]")]:
        with pytest.raises(ValueError, match=match):
            methods.build("integrated_gradients", classifier, baseline=bad)
    with pytest.raises(ValueError, match="the baseline is"):
        methods.build("integrated_gradients", classifier, baseline=torch.rand(3, 5, 5)).attribute(image, 0)
    with pytest.raises(ValueError, match="method must be one of"):
        methods.build("integrated_gradients", classifier, method="simpson")
    with pytest.raises(ValueError, match="steps must be"):
        methods.build("integrated_gradients", classifier, steps=1, method="riemann_left")


@pytest.mark.parametrize("quadrature, baseline", [("gausslegendre", "black"), ("riemann_trapezoid", "mean"),
                                                  ("riemann_left", "user"), ("riemann_middle", "black")])
def test_integrated_gradients_agree_with_captum(quadrature, baseline):
    classifier, images = small_cnn(), torch.rand(2, 3, 32, 32)
    targets = torch.tensor([1, 3])
    ours = {"black": "black", "mean": "mean", "user": torch.rand(3, 32, 32)}[baseline]
    method = methods.build("integrated_gradients", classifier, steps=7, method=quadrature, baseline=ours, max_batch=5)
    maps, delta = method.attribute_with_delta(images, targets)
    reference, reference_delta = captum_attr.IntegratedGradients(classifier).attribute(
        images, baselines=method.baselines(images), target=targets, n_steps=7, method=quadrature,
        return_convergence_delta=True)
    scale = 6 / 7 if quadrature == "riemann_trapezoid" else 1.0  # Captum's trapezoid weights sum to 1 - 1/steps
    torch.testing.assert_close(maps[:, 0] * scale, reference.sum(1), atol=1e-5, rtol=1e-4)
    gain = maps.sum((-2, -1)) - delta  # S(x) - S(b)
    torch.testing.assert_close(gain[:, 0], reference.sum((1, 2, 3)) - reference_delta, atol=1e-5, rtol=1e-4)
    if scale == 1.0:
        torch.testing.assert_close(delta[:, 0], reference_delta, atol=1e-5, rtol=1e-4)
    max_abs = methods.build("integrated_gradients", classifier, steps=7, method=quadrature, baseline=ours,
                            reduce="max_abs").attribute_with_delta(images, targets)
    torch.testing.assert_close(max_abs[0][:, 0] * scale, reference.abs().amax(1), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(max_abs[1], delta)  # the delta comes from the signed attribution whatever reduce


def test_integrated_gradients_converge_with_more_steps():
    classifier, images = small_cnn(), torch.rand(1, 3, 32, 32)
    errors = [methods.build("integrated_gradients", classifier, steps=n, method="riemann_right")
              .attribute_with_delta(images, 2)[1].abs().item() for n in (2, 32)]
    assert errors[1] < errors[0]
    assert methods.build("integrated_gradients", classifier, steps=9).passes(32, 32) == methods.Passes(9, 9)


def noisy_copies(images: torch.Tensor, method: methods.Method) -> torch.Tensor:
    """(samples,B,3,H,W): the images plus SmoothGrad's shared noise, unclamped."""
    return images.unsqueeze(0) + method.noise_tensor(*images.shape[-2:]).unsqueeze(1)


@pytest.mark.parametrize("base, base_kwargs", [("gradient", None), ("input_x_gradient", {"reduce": "abs"}),
                                               ("integrated_gradients", {"steps": 2})])
def test_smoothgrad_is_the_mean_and_variance_of_the_base_on_explicit_noisy_images(base, base_kwargs):
    classifier = small_cnn()
    images = torch.rand(2, 3, 16, 16)
    images[0, :, :4] = 1.0  # noise pushes these out of [0,1]: no clamping
    targets = torch.tensor([[1, 2], [3, -1]])
    inner = methods.build(base, classifier, **(base_kwargs or {}))
    results = {variant: methods.build("smoothgrad", classifier, base=base, base_kwargs=base_kwargs, samples=5,
                                      noise=0.2, variant=variant, max_batch=3).attribute(images, targets)
               for variant in ("smoothgrad", "smoothgrad_sq", "vargrad")}
    method = methods.build("smoothgrad", classifier, samples=5, noise=0.2)
    noisy = noisy_copies(images, method)
    assert noisy.max() > 1 and noisy.min() < 0
    with methods.base.scoped_eval(classifier):
        maps = torch.stack([inner.attribute_targets(x, targets) for x in noisy])  # (samples,B,K,H,W)
    valid = targets >= 0
    for variant, expected in [("smoothgrad", maps.mean(0)), ("smoothgrad_sq", maps.square().mean(0)),
                              ("vargrad", maps.var(0, unbiased=False))]:
        torch.testing.assert_close(results[variant][valid], expected[valid], atol=1e-5, rtol=1e-4)
        assert results[variant][~valid].isnan().all()


def test_smoothgrad_noise_seed_passes_and_errors():
    classifier = small_cnn()
    images = torch.rand(1, 3, 16, 16)
    first, same, other = (methods.build("smoothgrad", classifier, samples=4, seed=seed).attribute(images, 0)
                          for seed in (0, 0, 1))
    assert torch.equal(first, same) and not torch.allclose(first, other)
    noise = methods.build("smoothgrad", classifier, samples=2000, noise=0.15).noise_tensor(8, 8)
    assert abs(noise.std().item() - 0.15) < 0.005 and abs(noise.mean().item()) < 0.005
    zero = methods.build("smoothgrad", classifier, samples=3, noise=0.0).attribute(images, 2)
    torch.testing.assert_close(zero, methods.build("gradient", classifier).attribute(images, 2))
    sg = methods.build("smoothgrad", classifier, base="integrated_gradients", base_kwargs={"steps": 5}, samples=7)
    assert sg.passes(16, 16) == methods.Passes(35, 35)
    with pytest.raises(KeyError, match="unknown method 'nope'"):
        methods.build("smoothgrad", classifier, base="nope")
    with pytest.raises(ValueError, match="no hyper-parameter"):
        methods.build("smoothgrad", classifier, base_kwargs={"steps": 5})
    with pytest.raises(ValueError, match="variant must be one of"):
        methods.build("smoothgrad", classifier, variant="sq")


class TwoLayerMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(12, 3, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.out = nn.Linear(3, 1, bias=False)
        with torch.no_grad():
            self.hidden.weight.copy_(torch.tensor([1.0, -1.0, 2.0]).view(3, 1) * torch.arange(1.0, 13.0) / 12)
            self.out.weight.copy_(torch.tensor([[2.0, -3.0, -1.0]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.relu(self.hidden(x.flatten(1))))


def test_guided_backprop_and_deconvnet_by_hand_on_a_two_layer_mlp():
    # positive image: hidden pre-activations are (+, -, +); output weights (2, -3, -1).
    classifier = Classifier(TwoLayerMLP(), (0, 0, 0), (1, 1, 1))
    image = torch.rand(1, 3, 2, 2) + 0.01
    row = torch.arange(1.0, 13.0).view(3, 2, 2) / 12  # d pre-activation / d x, up to the unit's factor (1, -1, 2)
    plain = (2 * 1 + (-1) * 2) * row  # units 1 and 3 are active: gradient 2·row − 1·2·row = 0
    guided = 2 * 1 * row  # only active units with a positive gradient: unit 1
    deconv = 2 * 1 * row  # positive output weights, whatever the activation: unit 1 again
    for name, expected in [("gradient", plain), ("guided_backprop", guided), ("deconvnet", deconv)]:
        maps = methods.build(name, classifier, reduce="signed").attribute(image, 0)
        torch.testing.assert_close(maps[0, 0], expected.sum(0))
    classifier.model.out.weight.data = torch.tensor([[2.0, 3.0, -1.0]])  # unit 2 (inactive) now has gradient +3
    deconv = (2 * 1 + 3 * -1) * row
    torch.testing.assert_close(methods.build("deconvnet", classifier, reduce="signed").attribute(image, 0)[0, 0],
                               deconv.sum(0))
    torch.testing.assert_close(methods.build("guided_backprop", classifier, reduce="signed").attribute(image, 0)[0, 0],
                               guided.sum(0))


@pytest.mark.parametrize("name, reference", [("guided_backprop", captum_attr.GuidedBackprop),
                                             ("deconvnet", captum_attr.Deconvolution)])
def test_modified_relu_backward_agrees_with_captum_and_torchray(name, reference):
    classifier, images = small_cnn(), torch.rand(3, 3, 32, 32)
    targets = torch.tensor([0, 2, 3])
    raw = reference(classifier).attribute(images, target=targets)
    for reduce in ("max_abs", "signed"):
        maps = methods.build(name, classifier, reduce=reduce).attribute(images, targets)
        torch.testing.assert_close(maps[:, 0], reduce_channels(raw, reduce), atol=1e-6, rtol=1e-4)
    inplace = methods.build(name, small_cnn(inplace=True)).attribute(images, targets)
    torch.testing.assert_close(inplace[:, 0], raw.abs().amax(1), atol=1e-6, rtol=1e-4)
    torchray = pytest.importorskip(f"torchray.attribution.{name}")
    for i in range(3):
        expected = getattr(torchray, name)(classifier, images[i:i + 1], int(targets[i]))
        torch.testing.assert_close(inplace[i, 0], expected[0, 0], atol=1e-6, rtol=1e-4)


def test_guided_gradcam_is_guided_backprop_times_gradcam_and_agrees_with_captum():
    classifier, images = small_cnn(), torch.rand(2, 3, 32, 32)
    targets = torch.tensor([1, 3])
    ours = methods.build("guided_gradcam", classifier, reduce="signed").attribute(images, targets)[:, 0]
    reference = captum_attr.GuidedGradCam(classifier, classifier.model.features).attribute(
        images, target=targets, interpolate_mode="bilinear")
    torch.testing.assert_close(ours, reference.sum(1), atol=1e-6, rtol=1e-4)
    guided = methods.build("guided_backprop", classifier).attribute(images, targets)[:, 0]
    cam = methods.build("gradcam", classifier).attribute(images, targets)[:, 0]
    torch.testing.assert_close(methods.build("guided_gradcam", classifier).attribute(images, targets)[:, 0],
                               guided * cam)  # max_abs commutes with the non-negative CAM
    assert methods.build("guided_gradcam", classifier).passes(32, 32) == methods.Passes(2, 2)


class FunctionalReLU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.relu(x.flatten(1)[:, :2])


def test_relu_rule_restores_the_model_even_after_an_error():
    classifier = small_cnn(inplace=True)
    images = torch.rand(2, 3, 32, 32)
    before = methods.build("gradient", classifier).attribute(images, 1)
    relus = [m for m in classifier.modules() if isinstance(m, nn.ReLU)]
    for name in ("guided_backprop", "deconvnet", "guided_gradcam"):
        with pytest.raises(ValueError, match="out of range"):
            methods.build(name, classifier).attribute(images, 7)
    with pytest.raises(RuntimeError, match="boom"), relu_backward_rule(classifier, "guided"):
        assert all("forward" in m.__dict__ for m in relus)
        raise RuntimeError("boom")
    assert all("forward" not in m.__dict__ and m.inplace for m in relus)
    torch.testing.assert_close(methods.build("gradient", classifier).attribute(images, 1), before)
    own = copy.deepcopy(classifier)  # a module whose instance already shadows forward gets it back
    own.model.features[2].forward = own.model.features[2].forward
    saved = own.model.features[2].__dict__["forward"]
    methods.build("guided_backprop", own).attribute(images, 0)
    assert own.model.features[2].__dict__["forward"] is saved
    with pytest.raises(ValueError, match="has none.*F.relu"):
        methods.build("guided_backprop", Classifier(FunctionalReLU()))
