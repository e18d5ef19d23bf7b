"""Architecture contract: every registered method on small configurations of the mainstream families.

Random weights, 64 px inputs: torchvision ResNet-18, ViT, Swin and ConvNeXt, timm ViT, DeiT
(distilled: two prefix tokens), Swin and ConvNeXt. Every method gives finite maps of the right
shape or refuses with a clear error (``REFUSED``, the README's coverage matrix); every method that
reads a layer gives the map it gives on an NCHW view of the same layer (a hand-written reshape,
independent of ``Layout``); Grad-CAM agrees with pytorch-grad-cam and its ``reshape_transform``.
About 2 minutes on 2 CPU cores.
"""
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache

import pytest
import timm
import torch
import torchvision
from torch import Tensor, nn
from torchvision.models import ConvNeXt, SwinTransformer, VisionTransformer
from torchvision.models.convnext import CNBlockConfig

from contract_settings import FAST
from saliencylab import Classifier, methods
from saliencylab.models.masker import Masker, layer_channels

SIZE, CLASSES = 64, 4

def tv_vit() -> nn.Module:
    model = VisionTransformer(image_size=SIZE, patch_size=16, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
                              num_classes=CLASSES)
    nn.init.normal_(model.heads.head.weight)  # torchvision initialises the head to zero: every gradient would vanish
    return model


FAMILIES: dict[str, Callable[[], nn.Module]] = {
    "tv_resnet18": lambda: torchvision.models.resnet18(weights=None, num_classes=CLASSES),
    "tv_vit": tv_vit,
    "tv_swin": lambda: SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[1, 1, 1], num_heads=[1, 2, 4],
                                       window_size=[4, 4], num_classes=CLASSES),
    "tv_convnext": lambda: ConvNeXt([CNBlockConfig(16, 32, 1), CNBlockConfig(32, 64, 1), CNBlockConfig(64, None, 1)],
                                    num_classes=CLASSES),
    "timm_vit": lambda: timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=SIZE, depth=2,
                                          num_classes=CLASSES),
    "timm_deit": lambda: timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, img_size=SIZE, depth=2,
                                           num_classes=CLASSES),
    "timm_swin": lambda: timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=SIZE,
                                           window_size=4, embed_dim=16, depths=(1, 1, 1), num_heads=(1, 2, 4),
                                           num_classes=CLASSES),
    "timm_convnext": lambda: timm.create_model("convnext_atto", pretrained=False, depths=(1, 1, 1, 1),
                                               dims=(16, 32, 64, 128), num_classes=CLASSES),
}

# family -> (auto layer, its layout as (kind, prefix tokens, grid h, grid w)), written out by hand
AUTO = {
    "tv_resnet18": ("layer4", ("nchw", 0, 2, 2)),
    "tv_vit": ("encoder.layers.encoder_layer_1.ln_1", ("tokens", 1, 4, 4)),
    "tv_swin": ("norm", ("nhwc", 0, 4, 4)),
    "tv_convnext": ("features", ("nchw", 0, 4, 4)),
    "timm_vit": ("blocks.1.norm1", ("tokens", 1, 4, 4)),
    "timm_deit": ("blocks.1.norm1", ("tokens", 2, 4, 4)),
    "timm_swin": ("norm", ("nhwc", 0, 4, 4)),
    "timm_convnext": ("stages", ("nchw", 0, 2, 2)),
}
# a named block inside the network, read in its own layout (torchvision Swin blocks are channels-last)
BLOCKS = {"tv_swin": ("features.5.0", "nhwc"), "timm_swin": ("layers.1", "nhwc"),
          "tv_convnext": ("features.5.0.block.5", "nhwc"), "tv_vit": ("encoder.layers.encoder_layer_0", "tokens")}

RELU_ONLY = ("guided_backprop", "deconvnet", "guided_gradcam")  # modified ReLU backward: needs nn.ReLU modules
NOT_GAP_LINEAR = ("tv_vit", "timm_vit", "timm_deit", "tv_convnext", "timm_convnext")  # class token / norm after pooling
REFUSED: dict[tuple[str, str], str] = {
    **{(family, name): "nn.ReLU modules" for family in FAMILIES if family != "tv_resnet18" for name in RELU_ONLY},
    **{(family, "cam"): "global average pooling" for family in NOT_GAP_LINEAR},
}
"""(family, method) pairs a method refuses, with the error it raises: the README's coverage matrix."""

ARCH_FAST = {"occlusion": {"window": 32, "stride": 16}, "rise": {"num_masks": 16}, "igos_pp": {"iterations": 1, "steps": 2},
             "extremal_perturbation": {"max_iter": 2, "areas": (0.1,)}, "meaningful_perturbation": {"max_iter": 2}}
"""Tinier settings than tests/contract_settings.py's: here only finiteness and shapes are checked."""
LAYER_METHODS = ("gradcam", "gradcam_elementwise", "gradcam_pp", "layercam", "xgradcam", "scorecam", "cam",
                 "gradient_hessian", "guided_gradcam")


@cache
def classifier(family: str) -> Classifier:
    torch.manual_seed(0)
    return Classifier(FAMILIES[family]().eval())


def images(count: int = 2) -> Tensor:
    return torch.rand(count, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


def build(name: str, model: Classifier, **kwargs) -> methods.Method:
    if name == "masker":
        torch.manual_seed(0)
        layer = kwargs.pop("layer", "auto")
        kwargs["masker"] = Masker([layer], layer_channels(model, [layer]), channels=8)
    settings = {**FAST.get(name, {}), **ARCH_FAST.get(name, {}), **kwargs}
    return methods.build(name, model, **settings)


@pytest.mark.parametrize("family", FAMILIES)
def test_auto_layer_and_its_layout(family):
    model = classifier(family)
    path, (kind, prefix, height, width) = AUTO[family]
    assert model.layer_path() == path
    outputs = []
    with torch.no_grad(), hooked(model.layer(), lambda out: outputs.append(out)):
        model(images())
    layout = model.read_layout("auto", outputs[0], (SIZE, SIZE))
    assert (layout.kind, layout.prefix) == (kind, prefix)
    assert layout.to_grid(outputs[0]).shape[2:] == (height, width)
    if family in BLOCKS:
        block, block_kind = BLOCKS[family]
        with torch.no_grad(), hooked(model.layer(block), lambda out: outputs.append(out)):
            model(images())
        assert model.read_layout(block, outputs[-1], (SIZE, SIZE)).kind == block_kind


@pytest.mark.parametrize("name", methods.names())
@pytest.mark.parametrize("family", FAMILIES)
def test_every_method_gives_finite_maps_or_refuses(family, name):
    model = classifier(family)
    if (family, name) in REFUSED:
        with pytest.raises(ValueError, match=REFUSED[family, name]):
            build(name, model).attribute(images(1), 3)
        return
    maps = build(name, model).attribute(images(1), 3)  # batching is test_methods.py's contract
    assert maps.shape == (1, 1, SIZE, SIZE) and maps.dtype == torch.float32
    assert torch.isfinite(maps).all()


@contextmanager
def hooked(module: nn.Module, fn: Callable[[Tensor], object]) -> Iterator[None]:
    handle = module.register_forward_hook(lambda _m, _i, out: fn(out))
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def nchw_view(model: Classifier, layer: str, kind: str, prefix: int = 0) -> Iterator[Classifier]:
    """A classifier whose module ``view`` (an identity) sees ``layer``'s output as (B,C,h,w), declared NCHW."""
    view = nn.Identity()
    model.model.add_module("view", view)

    def through_view(out: Tensor) -> Tensor:
        if kind == "nchw":
            return view(out)
        if kind == "nhwc":
            return view(out.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        side = int((out.shape[1] - prefix) ** 0.5)
        grid = out[:, prefix:].transpose(1, 2).unflatten(2, (side, side))
        return torch.cat([out[:, :prefix], view(grid).flatten(2).transpose(1, 2)], dim=1)

    try:
        with hooked(model.layer(layer), through_view):
            yield Classifier(model.model, model.mean.tolist(), model.std.tolist(), layouts={"view": "nchw"})
    finally:
        del model.model.view


LAYER_CASES = [(family, AUTO[family][0], AUTO[family][1][:2]) for family in FAMILIES if AUTO[family][1][0] != "nchw"]
LAYER_CASES += [(family, layer, (kind, 1 if family == "tv_vit" else 0)) for family, (layer, kind) in BLOCKS.items()]


@pytest.mark.parametrize("name", [*LAYER_METHODS, "masker"])
@pytest.mark.parametrize("family,layer,layout", LAYER_CASES, ids=[f"{f}:{l}" for f, l, _ in LAYER_CASES])
def test_a_layer_gives_the_map_of_its_nchw_view(family, layer, layout, name):
    model = classifier(family)
    if (family, name) in REFUSED or (name == "cam" and layer != AUTO[family][0]):
        pytest.skip("refused (see test_every_method_gives_finite_maps_or_refuses)")
    targets = torch.tensor([[1], [2]])
    ours = build(name, model, layer=layer).attribute(images(), targets)
    with nchw_view(model, layer, *layout) as view:
        reference = build(name, view, layer="view").attribute(images(), targets)
    assert ours.abs().amax() > 0
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-6 * float(reference.abs().amax()))


def reshape_transform(family: str) -> Callable[[Tensor], Tensor] | None:
    """pytorch-grad-cam's ``reshape_transform`` for a family's auto layer, written as its tutorials do."""
    kind, prefix, height, width = AUTO[family][1]
    if kind == "nhwc":
        return lambda out: out.permute(0, 3, 1, 2)
    if kind == "tokens":
        return lambda out: out[:, prefix:].reshape(out.shape[0], height, width, out.shape[2]).permute(0, 3, 1, 2)
    return None


@pytest.mark.parametrize("family", FAMILIES)
def test_gradcam_agrees_with_pytorch_grad_cam(family):
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    model = classifier(family)
    batch, classes = images(), [1, 3]
    ours = build("gradcam", model).attribute(batch, classes)[:, 0]
    with pgc.GradCAM(model=model, target_layers=[model.layer()], reshape_transform=reshape_transform(family)) as cam:
        theirs = torch.from_numpy(cam(input_tensor=batch, targets=[ClassifierOutputTarget(c) for c in classes]))
    for mine, reference in zip(ours, theirs):  # theirs is min-max normalised per image
        assert torch.corrcoef(torch.stack([mine.flatten(), reference.flatten()]))[0, 1] > 0.999


@pytest.mark.parametrize("family", ["tv_vit"])  # timm's tokens have 192 channels: 3456 elements, 20 s
def test_third_derivatives_go_through_fused_attention(family):
    """Grad-CAM++'s exact derivatives (three backward passes) under the math attention kernel."""
    torch.manual_seed(0)
    model = Classifier(FAMILIES[family]().eval(), score="softmax")  # a smooth score: S'', S''' are not zero
    layer = AUTO[family][0]
    maps = build("gradcam_pp", model, derivatives="general", layer=layer, max_batch=256).attribute(images(1), 1)
    assert torch.isfinite(maps).all() and maps.abs().amax() > 0
