"""SaliencyDataModule: VOC and COCO trees served as resized, collated Batches through Lightning."""
from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import RandomSampler, SequentialSampler

from saliencylab.data import SaliencyDataModule, write_coco, write_voc
from saliencylab.types import BACKGROUND, Batch, Sample

CLASSES = ["disc", "square"]


def scene(image_id: str, height: int, width: int, label: int) -> Sample:
    """An image with one box of ``label`` over its top-left quarter, segmented exactly."""
    seg = torch.full((height, width), BACKGROUND, dtype=torch.long)
    seg[:height // 2, :width // 2] = label
    labels = torch.zeros(len(CLASSES))
    labels[label] = 1.0
    return Sample(image=torch.full((3, height, width), 0.5), labels=labels,
                  boxes=torch.tensor([[0, 0, width // 2 - 1, height // 2 - 1]], dtype=torch.float32),
                  box_labels=torch.tensor([label]), difficult=torch.tensor([False]), segmentation=seg,
                  image_id=image_id)


@pytest.fixture
def scenes() -> list[Sample]:
    return [scene("1", 20, 30, 0), scene("2", 12, 12, 1), scene("3", 40, 24, 0), scene("4", 16, 16, 1),
            scene("5", 10, 20, 0)]


def test_from_voc(tmp_path: Path, scenes: list[Sample]):
    write_voc(tmp_path, scenes, CLASSES, splits={"train": ["1", "2", "3"], "val": ["5", "4"]})
    module = SaliencyDataModule.from_voc(tmp_path, image_size=8, batch_size=2, class_names=CLASSES, test_split=None)
    train = module.train_dataloader()
    assert isinstance(train.sampler, RandomSampler) and train.batch_size == 2
    assert sorted(i for batch in train for i in batch.image_ids) == ["1", "2", "3"]
    val = module.val_dataloader()
    assert isinstance(val.sampler, SequentialSampler)
    batch = next(iter(val))
    assert isinstance(batch, Batch) and batch.image_ids == ["5", "4"]
    assert batch.images.shape == (2, 3, 8, 8) and batch.labels.tolist() == [[1, 0], [0, 1]]
    assert batch.segmentation.shape == (2, 8, 8)
    assert batch.boxes[0].tolist() == [[0, 0, 3, 3]]  # 20x10 image, box 10x5 -> a 4x4 quarter of 8x8
    assert torch.equal(batch.segmentation[0, :4, :4], torch.zeros(4, 4, dtype=torch.long))
    assert module.test_dataloader() == []


def test_from_coco(tmp_path: Path, scenes: list[Sample]):
    train = write_coco(tmp_path / "train.json", tmp_path / "train", scenes[:3], CLASSES)
    val = write_coco(tmp_path / "val.json", tmp_path / "val", scenes[3:], CLASSES)
    module = SaliencyDataModule.from_coco(tmp_path / "train", train, tmp_path / "val", val,
                                          image_size=(6, 10), batch_size=4)
    assert len(module.train_dataloader()) == 1
    batch = next(iter(module.val_dataloader()))
    assert batch.image_ids == ["4", "5"] and batch.images.shape == (2, 3, 6, 10)
    assert module.test_dataloader() == []

    other = write_coco(tmp_path / "other.json", tmp_path / "val", scenes[3:], ["disc", "ring"])
    with pytest.raises(ValueError, match="the COCO files hold different categories"):
        SaliencyDataModule.from_coco(tmp_path / "train", train, tmp_path / "val", other, image_size=8, batch_size=2)
    with pytest.raises(ValueError, match="give both the image folder and the JSON of a stage"):
        SaliencyDataModule.from_coco(tmp_path / "train", None, image_size=8, batch_size=2)


class TinyModel(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3, len(CLASSES))
        self.seen: list[str] = []

    def training_step(self, batch: Batch, index: int) -> torch.Tensor:
        logits = self.linear(batch.images.mean(dim=(2, 3)))
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, batch.labels)

    def validation_step(self, batch: Batch, index: int) -> None:
        self.seen += batch.image_ids

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_fits_with_and_without_validation(tmp_path: Path, scenes: list[Sample]):
    write_voc(tmp_path, scenes, CLASSES, splits={"train": ["1", "2", "3"], "val": ["4", "5"]})
    trainer_options = dict(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                           enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path)
    model = TinyModel()
    L.Trainer(**trainer_options).fit(model, datamodule=SaliencyDataModule.from_voc(
        tmp_path, image_size=8, batch_size=2, class_names=CLASSES, test_split=None))
    assert model.seen == ["4", "5"]
    model = TinyModel()
    L.Trainer(**trainer_options).fit(model, datamodule=SaliencyDataModule.from_voc(
        tmp_path, image_size=8, batch_size=2, class_names=CLASSES, val_split=None, test_split=None))
    assert model.seen == [] and model.trainer.global_step == 2
