"""Datasets in their real on-disk formats (VOC, COCO, ImageNet + metadata JSON, OpenImages30k), Sample
transforms and a LightningDataModule."""
from saliencylab.data.coco import COCODataset, write_coco
from saliencylab.data.folder import ImageFolder
from saliencylab.data.imagenet import ImageNetDataset
from saliencylab.data.imagenet_metadata import prepare_metadata
from saliencylab.data.openimages import OpenImagesDataset, write_openimages
from saliencylab.data.synthetic_imagenet import write_synthetic_imagenet
from saliencylab.data.transforms import Compose, RandomHorizontalFlip, Resize
from saliencylab.data.voc import VOC_CLASSES, VOCDataset, voc_palette, write_voc

__all__ = ["COCODataset", "ImageFolder", "ImageNetDataset", "OpenImagesDataset", "Compose", "RandomHorizontalFlip", "Resize", "SaliencyDataModule", "VOCDataset",
           "VOC_CLASSES", "prepare_metadata", "voc_palette", "write_coco", "write_openimages",
           "write_synthetic_imagenet", "write_voc"]


def __getattr__(name: str):
    # SaliencyDataModule imports lightning (seconds); load it only when asked for
    if name == "SaliencyDataModule":
        from saliencylab.data.module import SaliencyDataModule
        return SaliencyDataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
