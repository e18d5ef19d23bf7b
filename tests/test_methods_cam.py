"""CAM family: known answers, pytorch-grad-cam / TorchRay agreement, layer choice and token layouts."""
import pytest
import timm
import torch
from torch import nn

from saliencylab import Classifier, methods
from saliencylab.maps import normalize_minmax
from saliencylab.models.classifier import Layout, infer_layout
from saliencylab.models.zoo import SmallCNN

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)
GRADIENT_CAMS = ("gradcam", "gradcam_elementwise", "gradcam_pp", "layercam", "xgradcam")


class FullResCNN(nn.Module):
    """features at input resolution (so no CAM is resized: the references' cv2 resizing is the identity),
    then a spatially varying conv head -> GAP -> linear."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 5, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.Conv2d(5, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(4, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def full_res_classifier(gain: float = 1.0) -> Classifier:
    """``gain`` scales the logits: the references' min-max eps (1e-7) must be negligible next to the maps."""
    torch.manual_seed(0)
    model = FullResCNN()
    model.head[-1].weight.data *= gain
    return Classifier(model, MEAN, STD, layers={"features": "features"})


PGC = {"gradcam": "GradCAM", "gradcam_elementwise": "HiResCAM", "gradcam_pp": "GradCAMPlusPlus",
       "layercam": "LayerCAM", "xgradcam": "XGradCAM", "scorecam": "ScoreCAM"}


@pytest.mark.parametrize("name", sorted(PGC))
def test_agrees_with_pytorch_grad_cam(name):
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    classifier = full_res_classifier(gain=1.0 if name == "scorecam" else 1000.0)
    images = torch.rand(3, 3, 10, 10)
    classes = [2, 0, 1]
    ours = normalize_minmax(methods.build(name, classifier).attribute(images, classes))[:, 0]
    model = classifier.model.eval()
    with getattr(pgc, PGC[name])(model=model, target_layers=[model.features]) as cam:
        theirs = cam(input_tensor=classifier.normalize(images), targets=[ClassifierOutputTarget(c) for c in classes])
    # same formula, same layer resolution: equal up to float32 rounding (pgc computes in numpy)
    torch.testing.assert_close(ours, torch.from_numpy(theirs), atol=1e-5, rtol=1e-4)


def test_gradcam_agrees_with_torchray():
    grad_cam = pytest.importorskip("torchray.attribution.grad_cam").grad_cam
    classifier = full_res_classifier()
    images = torch.rand(2, 3, 10, 10)
    ours = methods.build("gradcam", classifier).attribute(images, [1, 2])[:, 0]
    theirs = grad_cam(classifier.model, classifier.normalize(images), [1, 2], saliency_layer="features")
    torch.testing.assert_close(ours, theirs[:, 0], atol=1e-6, rtol=1e-4)  # both raw


def test_cam_is_final_linear_weights_times_features_without_relu():
    torch.manual_seed(0)
    model = SmallCNN(3, width=4).eval()
    classifier = Classifier(model, MEAN, STD, layers={"features": "features"})
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        features = model.features(classifier.normalize(images))  # (2,32,4,4)
    classes = torch.tensor([2, 0])
    cam = (model.head.weight[classes][:, :, None, None] * features).sum(1)
    expected = nn.functional.interpolate(cam[:, None], size=(32, 32), mode="bilinear", align_corners=False)[:, 0]
    maps = methods.build("cam", classifier).attribute(images, classes)[:, 0]
    torch.testing.assert_close(maps, expected)
    assert (maps < 0).any()  # no ReLU, as in Zhou et al.
    assert methods.build("cam", classifier).passes(32, 32) == methods.Passes(1, 0)


def test_cam_rejects_models_that_do_not_end_in_gap_linear():
    with pytest.raises(ValueError, match="global average pooling"):  # conv head after the layer
        methods.build("cam", full_res_classifier()).attribute(torch.rand(1, 3, 10, 10), 0)
    classifier = Classifier(nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten(), nn.Linear(2 * 6 * 6, 2)), layers={"f": "0"})
    with pytest.raises(ValueError, match="in_features=2"):
        methods.build("cam", classifier).attribute(torch.rand(1, 3, 8, 8), 0)


def test_cam_rejects_a_hidden_linear_even_when_logits_are_tiny():
    torch.manual_seed(0)
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 3))
    model = nn.Sequential(nn.Conv2d(3, 4, 3), head)
    with torch.no_grad():  # logits of order 1e-6: an absolute tolerance of 1e-4 would accept any Linear
        head[4].weight.mul_(1e-6)
        head[4].bias.zero_()
    classifier = Classifier(model, layers={"f": "0"})
    with pytest.raises(ValueError, match="global average pooling"):
        methods.build("cam", classifier).attribute(torch.rand(2, 3, 8, 8), 1)
    head[2], head[3] = nn.Identity(), nn.Identity()  # now GAP -> the tiny Linear: accepted
    assert torch.isfinite(methods.build("cam", classifier).attribute(torch.rand(2, 3, 8, 8), 1)).all()


class SmoothHead(nn.Module):
    """logits = Linear(mean_hw(fn(A))) with A = features(x) a 1x1 conv on a 2x2 pooled input."""

    def __init__(self, fn, channels: int = 3) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.features = nn.Conv2d(3, channels, 1)
        self.fn = fn
        self.head = nn.Linear(channels, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.fn(self.features(self.pool(x))).mean((2, 3)))


def test_gradcam_pp_general_uses_true_higher_derivatives():
    torch.manual_seed(0)
    model = SmoothHead(torch.exp)
    classifier = Classifier(model, (0, 0, 0), (1, 1, 1), layers={"features": "features"})
    images = torch.rand(2, 3, 2, 2)
    with torch.no_grad():
        activation = model.features(images)  # (2,3,2,2)
    # S = Σ_k w_k mean(exp(A_k)): S' = S'' = S''' = w_k exp(A)/4, so α_k = 1 / (2 + Σ_hw A_k)
    w = model.head.weight[1][None, :, None, None]
    first = w * activation.exp() / 4
    alpha = 1 / (2 + activation.sum((2, 3), keepdim=True))
    weights = (alpha * first.relu()).sum((2, 3), keepdim=True)
    expected = (weights * activation).sum(1).relu()
    maps = methods.build("gradcam_pp", classifier, derivatives="general", max_batch=5).attribute(images, 1)
    torch.testing.assert_close(maps[:, 0], expected, atol=1e-6, rtol=1e-4)
    assert methods.build("gradcam_pp", classifier, derivatives="general").passes(2, 2) == methods.Passes(13, 36)


def test_gradcam_pp_general_on_exp_score_is_the_exp_form_scaled():
    torch.manual_seed(0)
    model = SmoothHead(torch.relu)
    model.head.weight.data *= 10  # g^2 >> the exp form's eps (1e-6)
    exp_model = nn.Sequential(model, nn.Module())
    exp_model[1].forward = torch.exp  # S = exp(Y): the paper's closed form (Eq. 19) is exact
    plain = Classifier(model, MEAN, STD, layers={"features": "features"})
    exp_scored = Classifier(exp_model, MEAN, STD, layers={"features": "0.features"})
    images = torch.rand(3, 3, 8, 8)
    exp_form = methods.build("gradcam_pp", plain).attribute(images, 1)
    general = methods.build("gradcam_pp", exp_scored, derivatives="general").attribute(images, 1)
    scale = plain(images)[:, 1].exp().detach()[:, None, None, None]  # general keeps the paper's exp(Y) factor
    torch.testing.assert_close(general, exp_form * scale, atol=1e-6, rtol=1e-3)
    assert general.abs().sum() > 0
    with pytest.raises(ValueError, match="derivatives must be one of"):
        methods.build("gradcam_pp", plain, derivatives="hessian")


def test_scorecam_weights_are_softmax_of_masked_scores_and_declares_passes():
    classifier = full_res_classifier()
    method = methods.build("scorecam", classifier, max_batch=3)
    assert method.passes(10, 10) == methods.Passes(6, 0)  # one unmasked pass + one per channel (5)
    images = torch.rand(2, 3, 10, 10)
    together = method.attribute(images, torch.tensor([[0, 2], [1, -1]]))
    alone = method.attribute(images[:1], 2)
    torch.testing.assert_close(together[0, 1], alone[0, 0])
    assert together[1, 1].isnan().all()


# --- layer choice and token layouts -------------------------------------------------------------

def tiny_vit(name: str = "vit_tiny_patch16_224", **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, img_size=32, patch_size=8, num_classes=3, depth=2,
                             embed_dim=24, num_heads=2, **kwargs)


def tiny_swin() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=32, window_size=2,
                             num_classes=3, depths=(1, 1), num_heads=(1, 1), embed_dim=8)


def test_auto_layer_for_cnns_and_transformers():
    assert Classifier(SmallCNN(2, width=4)).layer_path() == "features"
    assert Classifier(tiny_vit()).layer_path() == "blocks.1.norm1"
    assert Classifier(tiny_swin()).layer_path() == "norm"
    named = Classifier(SmallCNN(2, width=4), layers={"mid": "features.5"})
    assert named.layer_path() == "features.5" and named.layer_path("features.2") == "features.2"


def test_auto_layer_without_a_spatial_layer_says_to_pass_layer():
    classifier = Classifier(nn.Sequential(nn.Flatten(), nn.Linear(3 * 224 * 224, 2)))
    with pytest.raises(ValueError, match="pass layer="):
        methods.build("gradcam", classifier)


@pytest.mark.parametrize("model", [tiny_vit, lambda: tiny_vit("deit_tiny_distilled_patch16_224"), tiny_swin],
                         ids=["vit", "deit_distilled", "swin"])
def test_every_cam_runs_on_transformers(model):
    classifier = Classifier(model())
    images = torch.rand(2, 3, 32, 32)
    targets = torch.tensor([[0, 2], [1, 0]])
    for name in (*GRADIENT_CAMS, "scorecam"):
        maps = methods.build(name, classifier).attribute(images, targets)
        assert maps.shape == (2, 2, 32, 32) and torch.isfinite(maps).all(), name
    if classifier.layer_path() == "norm":  # Swin pools its last map on average: CAM applies
        assert torch.isfinite(methods.build("cam", classifier).attribute(images, targets)).all()
    else:  # class-token head: not GAP -> linear
        with pytest.raises(ValueError, match="global average pooling"):
            methods.build("cam", classifier).attribute(images, targets)


def test_tokens_and_their_gradient_are_reshaped_alike():
    vit = tiny_vit("deit_tiny_distilled_patch16_224")
    classifier = Classifier(vit, (0, 0, 0), (1, 1, 1))
    images = torch.rand(1, 3, 32, 32)
    outputs = []
    handle = vit.blocks[1].norm1.register_forward_hook(lambda m, i, o: outputs.append(o))
    try:
        score = vit(images)[0, 2]
    finally:
        handle.remove()
    (grad,) = torch.autograd.grad(score, outputs[0])
    tokens, grad = outputs[0][0, 2:].detach(), grad[0, 2:]  # drop class and distillation tokens
    expected = (tokens * grad).sum(1).relu().view(1, 1, 4, 4)  # row-major 4x4 patch grid
    expected = nn.functional.interpolate(expected, size=(32, 32), mode="bilinear", align_corners=False)[0, 0]
    torch.testing.assert_close(methods.build("gradcam_elementwise", classifier).attribute(images, 2)[0, 0], expected)


def test_explicit_layouts():
    x = torch.arange(2 * 5 * 6, dtype=torch.float32).view(2, 5, 6)  # 1 prefix + 2x2 patches, D=6
    layout = infer_layout(x, (32, 32), nn.Module(), declared="tokens")
    assert layout == Layout("tokens", 1, 2, 2)
    grid = layout.to_grid(x)
    assert grid.shape == (2, 6, 2, 2) and torch.equal(grid[:, :, 0, 1], x[:, 2])
    assert torch.equal(layout.from_grid(grid)[:, 1:], x[:, 1:]) and not layout.from_grid(grid)[:, 0].any()
    nhwc = torch.rand(2, 3, 4, 5)
    assert torch.equal(Layout("nhwc").to_grid(nhwc), nhwc.permute(0, 3, 1, 2))
    assert torch.equal(Layout("nhwc").from_grid(Layout("nhwc").to_grid(nhwc)), nhwc)
    classifier = Classifier(tiny_vit(), layers={"tokens": "blocks.1"}, layouts={"tokens": "tokens"})
    assert classifier.layer_layout() == "tokens"
    assert methods.build("gradcam", classifier).attribute(torch.rand(1, 3, 32, 32), 0).shape == (1, 1, 32, 32)
    wrong = Classifier(tiny_vit(), layouts={"blocks.1": "nchw"})  # keyed by module path; checked when used
    with pytest.raises(ValueError, match="needs a 4D layer output"):
        methods.build("gradcam", wrong, layer="blocks.1").attribute(torch.rand(1, 3, 32, 32), 0)
    with pytest.raises(ValueError, match="layout of layer"):
        Classifier(tiny_vit(), layouts={"blocks.1": "channels_first"})
