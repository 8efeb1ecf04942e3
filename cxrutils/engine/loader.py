"""The image cache served to PyTorch: whole batches from one memory-mapped read.

``CachedImageDataset`` reads a batch of uint8 films from an ``ImageCache``
(``cxrutils.data.cache``) at memory speed; ``make_loader`` wraps it in a DataLoader with
seeded shuffling, optionally distributed. Pixels stay uint8: the training device
converts and normalises them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, SequentialSampler

from cxrutils.data.cache import ImageCache


class CachedImageDataset(Dataset):
    """(uint8 (1, S, S), float32 labels) per image; ``__getitems__`` reads a batch at once.

    Pixels stay uint8 and unnormalised: the training code converts on the device,
    which moves 4x fewer bytes. Pickles without pixels (DataLoader workers map the
    cache again on first access).
    """

    def __init__(self, cache: ImageCache, names: Sequence[str], labels: np.ndarray) -> None:
        labels = np.asarray(labels, dtype=np.float32)
        if labels.ndim != 2 or labels.shape[0] != len(names):
            raise ValueError(f"labels must be (len(names), n_findings) = ({len(names)}, k); got {labels.shape}")
        self.folder = cache.folder
        self.fingerprint = cache.fingerprint
        self.size = cache.size
        self.names = list(names)
        self.row_numbers = cache.rows(self.names)
        self.labels = np.ascontiguousarray(labels)
        self._pixels: np.memmap | None = None

    def _memmap(self) -> np.memmap:
        if self._pixels is None:
            cache = ImageCache.open(self.folder)
            if cache.fingerprint != self.fingerprint:
                raise RuntimeError(f"the image cache in {self.folder} was rebuilt after this dataset was made; "
                                   "make the dataset again")
            self._pixels = cache.pixels
        return self._pixels

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = np.array(self._memmap()[self.row_numbers[i]])  # copy: the map is read-only
        return torch.from_numpy(image).unsqueeze(0), torch.from_numpy(self.labels[i].copy())

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """A whole batch from one fancy-index read: (B, 1, S, S) uint8, (B, k) float32."""
        index = np.asarray(indices, dtype=np.int64)
        rows = self.row_numbers[index]
        order = np.argsort(rows, kind="stable")  # ascending rows read the file in one sweep
        block = np.asarray(self._memmap()[rows[order]])
        images = np.empty(block.shape, dtype=np.uint8)
        images[order] = block  # back to the requested order
        return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(self.labels[index])

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_pixels": None}


def collate_batched(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch from ``__getitems__`` is already collated: pass it through."""
    return batch


def make_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int,
    num_workers: int,
    drop_last: bool = False,
    distributed: bool = False,
) -> DataLoader:
    """A DataLoader yielding whole batches; seeded shuffling, optionally distributed.

    With ``distributed`` the caller calls ``loader.sampler.set_epoch(epoch)`` each epoch.
    """
    sampler: torch.utils.data.Sampler
    if distributed:
        sampler = DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last)
    elif shuffle:
        generator = torch.Generator()
        generator.manual_seed(seed)
        sampler = RandomSampler(dataset, generator=generator)
    else:
        sampler = SequentialSampler(dataset)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_batched,
        pin_memory=torch.cuda.is_available(),
        drop_last=drop_last,
        persistent_workers=num_workers > 0,
    )
