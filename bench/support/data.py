"""Real labelled data that works offline: scikit-learn's digits and Debian's Fashion-MNIST."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_TRAIN = 12000  # training images the bench models are trained on (the rest of the 60k stay unseen)


def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train_x, train_y, test_x, test_y): 8x8 grey images scaled to [0, 1], 1-channel."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(data.target, dtype=torch.int64)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    images, labels = images[order], labels[order]
    return images[:1300], labels[:1300], images[1300:], labels[1300:]


def fashion_mnist(train_count: int = FASHION_TRAIN) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train_x, train_y, test_x, test_y) from `apt-get install dataset-fashion-mnist`."""
    if not FASHION_DIR.exists():
        raise FileNotFoundError("Fashion-MNIST not found: apt-get install dataset-fashion-mnist")

    def images(name: str) -> torch.Tensor:
        raw = gzip.open(FASHION_DIR / name).read()
        array = np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 1, 28, 28)
        return (torch.tensor(array, dtype=torch.float32) / 255.0 - 0.286) / 0.353

    def labels(name: str) -> torch.Tensor:
        return torch.tensor(np.frombuffer(gzip.open(FASHION_DIR / name).read(), np.uint8, offset=8), dtype=torch.int64)

    train_x, train_y = images("train-images-idx3-ubyte.gz"), labels("train-labels-idx1-ubyte.gz")
    return train_x[:train_count], train_y[:train_count], images("t10k-images-idx3-ubyte.gz"), labels("t10k-labels-idx1-ubyte.gz")
