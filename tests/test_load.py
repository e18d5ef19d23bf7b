"""Classifier loading: folders, torchvision:/timm: specs with user weights, and the errors users meet."""
import subprocess
import sys


def test_methods_load_checkpoints_without_importing_lightning(tmp_path):
    code = f"""
import sys
from saliencylab import build_classifier, methods
classifier = build_classifier("small_cnn", 3, width=4)
for name in ("explainer", "masker"):
    try:
        methods.build(name, classifier, checkpoint={str(tmp_path / 'nowhere')!r})
    except FileNotFoundError:
        pass
print(sorted(m for m in sys.modules if m.split('.')[0] == 'lightning' or m.startswith('saliencylab.training')))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
