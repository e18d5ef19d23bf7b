"""Hand-built Samples for format tests."""
import torch

from saliencylab.types import Sample


def smooth_image(height: int, width: int) -> torch.Tensor:
    """(3,H,W) gradients in [0.1,0.9]: JPEG keeps them within a few grey levels."""
    y = torch.linspace(0.1, 0.9, height)[:, None].expand(height, width)
    x = torch.linspace(0.1, 0.9, width)[None, :].expand(height, width)
    return torch.stack([y, x, (x + y) / 2])


def make_sample(image_id: str, hw: tuple[int, int], boxes: list, labels: list, difficult: list,
                segmentation: torch.Tensor | None, num_classes: int) -> Sample:
    multi_hot = torch.zeros(num_classes)
    multi_hot[labels] = 1.0
    return Sample(image=smooth_image(*hw), labels=multi_hot, boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                  box_labels=torch.tensor(labels, dtype=torch.long), difficult=torch.tensor(difficult, dtype=torch.bool),
                  segmentation=segmentation, image_id=image_id)
