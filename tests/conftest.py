"""Fixtures shared by several test files."""
import pytest
import torch

from saliencylab.data.synthetic import CLASSES
from saliencylab.models.load import save_classifier
from saliencylab.models.zoo import build_classifier


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    """A directory holding a random-weight small_cnn (width 4) over the synthetic CLASSES, as fit_classifier writes."""
    torch.manual_seed(0)
    classifier = build_classifier("small_cnn", len(CLASSES), class_names=CLASSES, width=4)
    return save_classifier(classifier, tmp_path_factory.mktemp("classifier"), arch="small_cnn", width=4)
