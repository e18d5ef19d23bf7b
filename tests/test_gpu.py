"""Checks that need a CUDA device (marker ``gpu``; skipped without one): every registered method on CUDA equals
its CPU maps, and one short fit under bf16-mixed. Run them with ``scripts/gpu_checks.sh`` on a GPU machine."""
import copy
import json

import pytest
import torch

from contract_settings import ATOL, FAST
from saliencylab import methods
from saliencylab.data.module import SaliencyDataModule
from saliencylab.data.synthetic import CLASSES, SyntheticConfig, generate
from saliencylab.scale import Scale
from saliencylab.training.classifier import fit_classifier
from test_methods import small_cnn

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize("name", methods.names())
def test_method_on_cuda_equals_cpu(name):
    torch.manual_seed(1)
    images = torch.rand(2, 3, 32, 32)
    targets = torch.tensor([[0, 2], [1, -1]])
    settings = FAST.get(name, {})
    cpu = methods.build(name, small_cnn(), **settings).attribute(images, targets)
    gpu_settings = {k: copy.deepcopy(v).cuda() if isinstance(v, torch.nn.Module) else v for k, v in settings.items()}
    cuda = methods.build(name, small_cnn().cuda(), **gpu_settings).attribute(images.cuda(), targets.cuda())
    assert cuda.device.type == "cuda" and cuda.shape == cpu.shape
    scale = cpu.nan_to_num().abs().max().clamp_min(1e-12)
    torch.testing.assert_close(cuda.cpu().nan_to_num() / scale, cpu.nan_to_num() / scale, rtol=1e-3,
                               atol=max(1e-4, ATOL.get(name, 0.0)))
    assert torch.equal(cuda.isnan().cpu(), cpu.isnan())


def test_short_classifier_fit_under_bf16_mixed(tmp_path):
    splits = generate(SyntheticConfig(image_size=32, train=32, val=16, test=16, seed=2))
    datamodule = SaliencyDataModule(splits["train"], splits["val"], splits["test"], batch_size=8)
    classifier, scores = fit_classifier(datamodule, tmp_path, num_classes=len(CLASSES), class_names=list(CLASSES),
                                        width=8, max_epochs=2, progress=False, accelerator="gpu",
                                        scale=Scale(precision="bf16-mixed"))
    description = json.loads((tmp_path / "classifier.json").read_text())
    assert description["epochs"] == 2 and 0.0 <= scores["micro_f1"] <= 1.0
    assert all(p.dtype == torch.float32 for p in classifier.parameters())  # mixed: weights stay float32
