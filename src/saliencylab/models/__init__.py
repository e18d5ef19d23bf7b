"""Classifier wrapper, builders and weight files."""
from saliencylab.models.classifier import Classifier, check_images
from saliencylab.models.io import load_state_dict, save_state_dict
from saliencylab.models.zoo import ARCHITECTURES, SmallCNN, build_classifier

__all__ = ["ARCHITECTURES", "Classifier", "SmallCNN", "build_classifier", "check_images",
           "load_state_dict", "save_state_dict"]
