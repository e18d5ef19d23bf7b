"""Methods: known answers on tiny models, and the contract every registered method keeps."""
import pytest
import torch
from torch import nn

from contract_settings import ATOL, FAST
from saliencylab import Classifier, methods
from saliencylab.models.zoo import SmallCNN

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)


def linear_classifier(num_classes: int = 3, size: int = 8) -> tuple[Classifier, nn.Linear]:
    torch.manual_seed(0)
    linear = nn.Linear(3 * size * size, num_classes)
    return Classifier(nn.Sequential(nn.Flatten(), linear), MEAN, STD), linear


def small_cnn(num_classes: int = 4) -> Classifier:
    torch.manual_seed(0)
    model = SmallCNN(num_classes, width=4)
    model.eval()
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):  # non-trivial running stats
        bn.running_mean.uniform_(-0.1, 0.1)
        bn.running_var.uniform_(0.5, 1.5)
    return Classifier(model, MEAN, STD, layers={"features": "features"})


class SpatialHead(nn.Module):
    """features: 1x1 conv (no bias) -> logits = Σ_khw W[c,k,h,w] · A[k,h,w] (no pooling)."""

    def __init__(self, num_classes: int = 2, channels: int = 3, size: int = 4) -> None:
        super().__init__()
        self.features = nn.Conv2d(3, channels, 1, bias=False)
        self.head = nn.Linear(channels * size * size, num_classes, bias=False)
        self.pool = nn.AdaptiveAvgPool2d(size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(self.pool(x)).flatten(1))


def test_gradient_of_linear_model_is_weight_over_std():
    classifier, linear = linear_classifier()
    images = torch.rand(2, 3, 8, 8)
    maps = methods.build("gradient", classifier, reduce="signed").attribute(images, torch.tensor([[2], [0]]))
    weights = linear.weight.detach().view(3, 3, 8, 8) / torch.tensor(STD).view(1, 3, 1, 1)
    torch.testing.assert_close(maps[0, 0], weights[2].sum(0))
    torch.testing.assert_close(maps[1, 0], weights[0].sum(0))
    max_abs = methods.build("gradient", classifier).attribute(images, 1)
    torch.testing.assert_close(max_abs[:, 0], weights[1].abs().amax(0).expand(2, 8, 8))
    abs_sum = methods.build("gradient", classifier, reduce="abs").attribute(images, 1)
    torch.testing.assert_close(abs_sum[:, 0], weights[1].abs().sum(0).expand(2, 8, 8))


def test_gradient_of_softmax_score_matches_autograd_by_hand():
    classifier, _ = linear_classifier()
    classifier.score = "softmax"
    image = torch.rand(1, 3, 8, 8)
    x = image.clone().requires_grad_(True)
    classifier(x).softmax(1)[0, 1].backward()
    maps = methods.build("gradient", classifier, reduce="signed").attribute(image, 1)
    torch.testing.assert_close(maps[0, 0], x.grad[0].sum(0))


def test_gradcam_on_gap_linear_equals_cam():
    classifier = small_cnn()
    images = torch.rand(3, 3, 32, 32)
    model = classifier.model
    with torch.no_grad():
        features = model.features(classifier.normalize(images))  # (3,C',4,4)
    cls = torch.tensor([1, 3, 0])
    weights = model.head.weight[cls]  # (3,C')
    cam = (weights[:, :, None, None] * features).sum(1).relu() / features[0, 0].numel()
    expected = nn.functional.interpolate(cam[:, None], size=(32, 32), mode="bilinear", align_corners=False)[:, 0]
    for name in ("gradcam", "gradcam_elementwise"):  # equal for GAP -> linear: the gradient is constant in space
        maps = methods.build(name, classifier).attribute(images, cls)
        torch.testing.assert_close(maps[:, 0], expected, atol=1e-5, rtol=1e-4)


def test_elementwise_gradcam_keeps_spatial_weights():
    torch.manual_seed(1)
    model = SpatialHead()
    classifier = Classifier(model, (0, 0, 0), (1, 1, 1), layers={"features": "features"})
    images = torch.rand(1, 3, 4, 4)
    with torch.no_grad():
        activation = model.features(images)[0]  # (3,4,4); pool to 4 is the identity here
    weight = model.head.weight[1].view(3, 4, 4)
    elementwise = methods.build("gradcam_elementwise", classifier).attribute(images, 1)[0, 0]
    standard = methods.build("gradcam", classifier).attribute(images, 1)[0, 0]
    torch.testing.assert_close(elementwise, (weight * activation).sum(0).relu())
    torch.testing.assert_close(standard, (weight.mean((1, 2))[:, None, None] * activation).sum(0).relu())
    assert not torch.allclose(elementwise, standard)


@pytest.fixture(params=methods.names())
def method_name(request):
    return request.param


def build_fast(name: str, classifier: Classifier, **kwargs) -> methods.Method:
    return methods.build(name, classifier, **{**FAST.get(name, {}), **kwargs})


def assert_invariant(name: str, actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, atol=ATOL.get(name, 1e-5), rtol=1e-4, equal_nan=True)


def test_contract_shapes_dtype_device_and_padding(method_name):
    classifier = small_cnn()
    images = torch.rand(2, 3, 24, 20)
    maps = build_fast(method_name, classifier).attribute(images, torch.tensor([[0, 2], [1, -1]]))
    assert maps.shape == (2, 2, 24, 20) and maps.dtype == torch.float32 and maps.device == images.device
    assert torch.isfinite(maps[0]).all() and torch.isfinite(maps[1, 0]).all()
    assert maps[1, 1].isnan().all()


def test_contract_batched_equals_per_sample_and_k_targets_equal_k_calls(method_name):
    classifier = small_cnn()
    images = torch.rand(3, 3, 32, 32)
    targets = torch.tensor([[0, 1], [2, 3], [1, -1]])
    method = build_fast(method_name, classifier)
    batched = method.attribute(images, targets)
    for i in range(3):
        for k in range(2):
            if targets[i, k] >= 0:
                single = method.attribute(images[i:i + 1], int(targets[i, k]))
                assert_invariant(method_name, batched[i, k], single[0, 0])


def test_contract_chunking_does_not_change_results(method_name):
    classifier = small_cnn()
    images = torch.rand(3, 3, 32, 32)
    targets = torch.tensor([[0, 1], [2, 3], [1, 0]])
    whole = build_fast(method_name, classifier, max_batch=64).attribute(images, targets)
    chunked = build_fast(method_name, classifier, max_batch=1).attribute(images, targets)
    assert_invariant(method_name, whole, chunked)


def test_contract_channels_last_classifier_gives_the_same_maps(method_name):
    images = torch.rand(2, 3, 32, 32)
    targets = torch.tensor([[0, 1], [2, -1]])
    default = build_fast(method_name, small_cnn()).attribute(images, targets)
    classifier = small_cnn().use_channels_last()
    assert classifier.model.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    fast = build_fast(method_name, classifier).attribute(images, targets)
    assert_invariant(method_name, fast, default)


def test_contract_results_are_reproducible(method_name):
    classifier = small_cnn()
    images = torch.rand(2, 3, 32, 32)
    first = build_fast(method_name, classifier).attribute(images, 1)
    second = build_fast(method_name, classifier).attribute(images, 1)
    assert torch.equal(first, second)


def test_contract_declares_its_minimum_passes(method_name):
    passes = build_fast(method_name, small_cnn()).passes(32, 32)
    assert passes.forward >= 0 and passes.backward >= 0


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._backward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_contract_state_restored_and_hooks_removed(method_name):
    classifier = small_cnn()
    classifier.train()
    classifier.model.head.requires_grad_(False)  # a mix of frozen and trainable parameters
    flags = {name: p.requires_grad for name, p in classifier.named_parameters()}
    images = torch.rand(2, 3, 32, 32, requires_grad=True)
    images.grad = torch.full_like(images, 7.0)
    method = build_fast(method_name, classifier)
    method.attribute(images, 1)
    assert classifier.training and all(m.training for m in classifier.modules())
    assert {name: p.requires_grad for name, p in classifier.named_parameters()} == flags
    assert _hook_count(classifier) == 0
    assert torch.equal(images.grad, torch.full_like(images, 7.0))
    assert all(p.grad is None for p in classifier.parameters())
    if method.passes(32, 32).forward == 0:
        return  # a baseline never runs the model: nothing can fail inside it
    with pytest.raises(ValueError, match="out of range"):
        method.attribute(images.detach(), 9)  # the classifier has 4 classes: fails inside the forward
    assert classifier.training and _hook_count(classifier) == 0
    assert {name: p.requires_grad for name, p in classifier.named_parameters()} == flags


def test_registry_rejects_unknown_names_and_hyperparameters():
    classifier = small_cnn()
    with pytest.raises(KeyError, match="registered methods: .*gradcam"):
        methods.build("gradcam_plus_plus_typo", classifier)
    with pytest.raises(ValueError, match="no hyper-parameter.*strength.*takes: layer="):
        methods.build("gradcam", classifier, strength=2)
    with pytest.raises(ValueError, match="unknown layer 'nope'"):
        methods.build("gradcam", classifier, layer="nope")
    with pytest.raises(ValueError, match="reduce must be one of"):
        methods.build("gradient", classifier, reduce="mean")
    with pytest.raises(TypeError, match="saliencylab.Classifier"):
        methods.build("gradient", nn.Linear(2, 2))


def test_auto_layer_is_found_without_names_and_paths_work():
    classifier = Classifier(SmallCNN(2, width=4))  # no layers named: the last spatial feature map is chosen
    assert classifier.layer_path() == "features"
    method = methods.build("gradcam", classifier, layer="features.3")  # a dotted module path works
    assert method.attribute(torch.rand(1, 3, 16, 16), 0).shape == (1, 1, 16, 16)


@pytest.mark.parametrize("images, targets, error, match", [
    (torch.rand(2, 3, 8), 0, ValueError, r"shape \(B,3,H,W\)"),
    (torch.rand(2, 1, 8, 8), 0, ValueError, r"shape \(B,3,H,W\)"),
    (torch.rand(2, 3, 8, 8) * 255, 0, ValueError, r"values in \[0,1\]"),
    ((torch.rand(2, 3, 8, 8) * 255).byte(), 0, TypeError, "float tensor"),
    (torch.rand(2, 3, 8, 8), torch.tensor([0, 1, 2]), ValueError, "3 rows but the batch has 2"),
    (torch.rand(2, 3, 8, 8), torch.ones(2, 4), TypeError, "from_multi_hot"),
    (torch.rand(2, 3, 8, 8), -3, ValueError, ">= 0"),
])
def test_bad_input_errors_say_what_was_expected(images, targets, error, match):
    classifier = small_cnn()
    with pytest.raises(error, match=match):
        methods.build("gradient", classifier).attribute(images, targets)


def test_target_out_of_range_is_caught_before_running_when_classes_are_known():
    classifier = small_cnn()
    classifier.class_names = ["a", "b", "c", "d"]
    with pytest.raises(ValueError, match=r"out of range .* 4 classes \(expected 0..3\)"):
        methods.build("gradcam", classifier).attribute(torch.rand(1, 3, 16, 16), 4)


def test_contract_declarations_hold(method_name):
    """output_range, per_class and trained say what the maps and the constructor really are."""
    cls = methods.get(method_name)
    assert cls.trained == ("checkpoint" in methods.hyperparameters(method_name))
    method = build_fast(method_name, small_cnn())
    assert cls.output_range in methods.OUTPUT_RANGES and method.output_range in methods.OUTPUT_RANGES
    images = torch.rand(2, 3, 24, 24)
    maps = method.attribute(images, torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0]]))
    if method.output_range == "unit":
        assert maps.min() >= 0 and maps.max() <= 1
    if method.output_range == "nonnegative":
        assert maps.min() >= 0
    if not method.per_class:
        assert torch.equal(maps, maps[:, :1].expand_as(maps))


def test_scoped_eval_restores_mixed_modes_and_flags_even_on_errors():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))
    model[1].eval()  # frozen batch statistics in a training model, as when fine-tuning
    model[3].requires_grad_(False)
    modes = [m.training for m in model.modules()]
    flags = [p.requires_grad for p in model.parameters()]
    with pytest.raises(RuntimeError, match="inside"):
        with methods.base.scoped_eval(model):
            assert not any(m.training for m in model.modules())
            assert not any(p.requires_grad for p in model.parameters())
            raise RuntimeError("inside")
    assert [m.training for m in model.modules()] == modes == [True, True, False, True, True]
    assert [p.requires_grad for p in model.parameters()] == flags == [True, True, True, True, False, False]


def test_scoped_eval_freezes_a_shared_parameter_and_gives_it_back():
    first, second = nn.Linear(2, 2), nn.Linear(2, 2)
    second.weight = first.weight  # tied weights: one parameter in two modules
    model = nn.Sequential(first, nn.Sequential(second))
    with methods.base.scoped_eval(model):
        assert not first.weight.requires_grad and not second.bias.requires_grad
    assert all(p.requires_grad for p in model.parameters()) and second.weight is first.weight
