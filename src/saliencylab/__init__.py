"""saliencylab: where does an image classifier look, and is the explanation right?"""
from saliencylab.models import Classifier, build_classifier
from saliencylab.types import BACKGROUND, VOID, Batch, Sample

__version__ = "0.1.0"
__all__ = ["BACKGROUND", "VOID", "Batch", "Classifier", "Sample", "__version__", "build_classifier"]
