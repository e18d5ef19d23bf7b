"""A LightningDataModule over Sample datasets, batching with :func:`saliencylab.types.collate`."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import lightning as L
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from saliencylab.data.coco import COCODataset
from saliencylab.data.transforms import Resize
from saliencylab.data.voc import VOC_CLASSES, VOCDataset
from saliencylab.types import Sample, collate


class InMemory(Dataset):
    """Load every sample of ``dataset`` once and keep it; apply ``transform`` (e.g. a random flip) per access.

    For small sets (the synthetic demo) that would otherwise decode the same files every epoch.
    """

    def __init__(self, dataset: Dataset, transform: Callable[[Sample], Sample] | None = None,
                 progress: bool = False) -> None:
        self.samples = [dataset[i] for i in tqdm(range(len(dataset)), desc="loading", disable=not progress)]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        sample = self.samples[index]
        return sample if self.transform is None else self.transform(sample)


class SaliencyDataModule(L.LightningDataModule):
    """Train / val / test datasets of Samples (any may be None) served as Batches; only train shuffles.

    A stage without a dataset yields no batches (an empty list of loaders), so Lightning skips it.
    ``train_collate`` batches the training set (default :func:`collate`; e.g. ``gridding.collate_gridded``);
    ``drop_last``: leave out the last partial training batch (as the consistent-interpretations COCO training).
    """

    def __init__(self, train: Dataset | None = None, val: Dataset | None = None, test: Dataset | None = None,
                 batch_size: int = 32, num_workers: int = 0, train_collate: Callable[[list], object] = collate,
                 drop_last: bool = False) -> None:
        super().__init__()
        self.train, self.val, self.test = train, val, test
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.train_collate, self.drop_last = train_collate, drop_last

    def _loader(self, dataset: Dataset | None, shuffle: bool, collate_fn: Callable[[list], object] = collate,
                drop_last: bool = False) -> DataLoader | list:
        if dataset is None:
            return []
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          collate_fn=collate_fn, persistent_workers=self.num_workers > 0, drop_last=drop_last)

    def train_dataloader(self) -> DataLoader | list:
        return self._loader(self.train, shuffle=True, collate_fn=self.train_collate, drop_last=self.drop_last)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader(self.val, shuffle=False)

    def test_dataloader(self) -> DataLoader | list:
        return self._loader(self.test, shuffle=False)

    @classmethod
    def from_voc(cls, root: str | Path, image_size: int | tuple[int, int], batch_size: int,
                 class_names: tuple[str, ...] | list[str] = VOC_CLASSES, train_split: str | None = "train",
                 val_split: str | None = "val", test_split: str | None = "test",
                 num_workers: int = 0) -> SaliencyDataModule:
        """VOC splits (a split of None is left out), each resized to ``image_size``."""
        def dataset(split: str | None) -> VOCDataset | None:
            return None if split is None else VOCDataset(root, split, class_names, transform=Resize(image_size))
        return cls(dataset(train_split), dataset(val_split), dataset(test_split), batch_size, num_workers)

    @classmethod
    def from_coco(cls, train_images: str | Path | None = None, train_json: str | Path | None = None,
                  val_images: str | Path | None = None, val_json: str | Path | None = None,
                  test_images: str | Path | None = None, test_json: str | Path | None = None, *,
                  image_size: int | tuple[int, int], batch_size: int, num_workers: int = 0) -> SaliencyDataModule:
        """COCO (image folder, instances JSON) pairs (a pair of None is left out), each resized to ``image_size``.

        Every given JSON must hold the same categories, so labels mean the same class in every stage.
        """
        def dataset(images: str | Path | None, json: str | Path | None) -> COCODataset | None:
            if (images is None) != (json is None):
                raise ValueError(f"give both the image folder and the JSON of a stage, got {images!r} and {json!r}")
            return None if images is None else COCODataset(images, json, transform=Resize(image_size))
        datasets = [dataset(train_images, train_json), dataset(val_images, val_json), dataset(test_images, test_json)]
        categories = {(d.category_ids, d.class_names) for d in datasets if d is not None}
        if len(categories) > 1:
            raise ValueError(f"the COCO files hold different categories: {sorted(categories)}")
        return cls(*datasets, batch_size, num_workers)
