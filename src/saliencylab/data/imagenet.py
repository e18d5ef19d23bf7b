"""ImageNet as Samples: the images of a metadata JSON (see :mod:`saliencylab.data.imagenet_metadata`)."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from saliencylab.data.base import AnnotatedDataset, load_resized_image
from saliencylab.data.imagenet_metadata import read_boxes, read_metadata
from saliencylab.types import Sample


class ImageNetDataset(AnnotatedDataset):
    """The images of a metadata JSON as single-label Samples at ``size`` x ``size``.

    Image: Resize(size) + CenterCrop(size) (PIL bilinear), or Resize([size, size]) with
    ``break_ratio``; labels: one-hot of the JSON's class index; image_id: the file stem.
    With ``boxes_file`` (keyed by file stem) the boxes are read as they are, so they must have
    been mapped for the same ``size`` and ``break_ratio`` (prepare_metadata's ``size``); they
    are not clipped and may reach outside the image. box_labels = the label; difficult = False.
    """

    def __init__(self, metadata_file: str | Path, boxes_file: str | Path | None = None, size: int = 224,
                 break_ratio: bool = False, transform: Callable[[Sample], Sample] | None = None) -> None:
        self.metadata_file = Path(metadata_file)
        self.metadata = read_metadata(self.metadata_file)
        self.class_names = tuple(self.metadata.classes)
        self.ids = [Path(path).stem for path, _ in self.metadata.samples]
        self.size, self.break_ratio, self.transform = size, break_ratio, transform
        self.boxes = None if boxes_file is None else read_boxes(boxes_file)
        if self.boxes is not None:
            missing = [i for i in self.ids if i not in self.boxes]
            if missing:
                raise ValueError(f"box file {boxes_file} has no boxes for {len(missing)} images of "
                                 f"{self.metadata_file}, e.g. {missing[:5]}")

    def instance_labels(self, index: int) -> list[int]:
        """The one class of image ``index``, read from the metadata without the image."""
        return [self.metadata.samples[index][1]]

    def __getitem__(self, index: int) -> Sample:
        path, label = self.metadata.samples[index]
        image = load_resized_image(Path(self.metadata.root) / path, self.size, self.break_ratio, self.metadata_file)
        labels = torch.zeros(self.num_classes)
        labels[label] = 1.0
        boxes = [] if self.boxes is None else self.boxes[self.ids[index]]
        sample = Sample(image=image, labels=labels, boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                        box_labels=torch.full((len(boxes),), label, dtype=torch.long),
                        difficult=torch.zeros(len(boxes), dtype=torch.bool), image_id=self.ids[index])
        return self.transform(sample) if self.transform else sample
