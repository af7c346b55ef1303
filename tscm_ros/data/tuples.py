"""Torch datasets for training: single images (embedding caches, evaluation) and mined training tuples.

Images are read with PIL (RGB) and prepared with the published preprocessing,
:func:`tscm_ros.models.preprocessing.preprocess` (ToTensor -> ImageNet normalise -> bilinear resize to
the network input).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import Dataset

from tscm_ros.data.mining import TrainingTuple
from tscm_ros.image_files import read_rgb
from tscm_ros.models.preprocessing import preprocess


def load_image(path: str | Path, size: tuple[int, int]) -> torch.Tensor:
    """One image file -> (3, H, W) float32 network input."""
    try:
        rgb = read_rgb(Path(path))
    except FileNotFoundError:
        raise FileNotFoundError(f"training image not found: {path}") from None
    except OSError as error:
        raise OSError(f"cannot read image {path}: {error}") from error
    return preprocess(rgb, size=size)[0]


class ImageListDataset(Dataset):
    """``paths[i]`` -> (3, H, W) tensor."""

    def __init__(self, paths: Sequence[str | Path], size: tuple[int, int]) -> None:
        self.paths = list(paths)
        self.size = tuple(size)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return load_image(self.paths[index], self.size)


@dataclass
class TupleBatch:
    """A collated batch of B tuples: images in one tensor ``[queries; positives; negatives]``."""

    images: torch.Tensor  # (2B + sum(n_i), 3, H, W)
    negative_counts: torch.Tensor  # (B,) int64
    indices: torch.Tensor  # (B,) index of each tuple in its TupleDataset

    @property
    def batch_size(self) -> int:
        return len(self.negative_counts)

    def pin_memory(self) -> TupleBatch:
        return TupleBatch(self.images.pin_memory(), self.negative_counts, self.indices)


class TupleDataset(Dataset):
    """Mined tuples -> (query (3,H,W), positive (3,H,W), negatives (n,3,H,W), tuple index)."""

    def __init__(
        self,
        tuples: Sequence[TrainingTuple],
        database: Sequence[str | Path],
        queries: Sequence[str | Path],
        size: tuple[int, int],
    ) -> None:
        self.tuples = list(tuples)
        self.database = list(database)
        self.queries = list(queries)
        self.size = tuple(size)

    def __len__(self) -> int:
        return len(self.tuples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        t = self.tuples[index]
        query = load_image(self.queries[t.query], self.size)
        positive = load_image(self.database[t.positive], self.size)
        negatives = torch.stack([load_image(self.database[n], self.size) for n in t.negatives])
        return query, positive, negatives, index


def collate_tuples(items: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]]) -> TupleBatch:
    """Variable negative counts: all negatives are concatenated after the queries and positives."""
    queries, positives, negatives, indices = zip(*items, strict=True)
    images = torch.cat([torch.stack(queries), torch.stack(positives), *negatives])
    counts = torch.tensor([len(n) for n in negatives], dtype=torch.int64)
    return TupleBatch(images, counts, torch.tensor(indices, dtype=torch.int64))


def split_embeddings(
    embeddings: torch.Tensor, negative_counts: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Embeddings of a :class:`TupleBatch` -> anchor (B,D), positive (B,D), negatives (B,N,D), mask (B,N)."""
    batch = len(negative_counts)
    anchor, positive, flat_negatives = (
        embeddings[:batch],
        embeddings[batch : 2 * batch],
        embeddings[2 * batch :],
    )
    negatives = pad_sequence(flat_negatives.split(negative_counts.tolist()), batch_first=True)
    mask = torch.arange(negatives.shape[1]).unsqueeze(0) < negative_counts.unsqueeze(1)  # (B, N)
    return anchor, positive, negatives, mask.to(embeddings.device)
