"""Small models trained here in about a second on scikit-learn's digits (shipped with it, nothing is
downloaded): real trained weights whose outputs are what output_kind has to read.

- a weak classifier: 10 raw logits from an MLP fitted on 30 images, about 78% accurate on the rest,
  without a clear winner per row (like the bench's under-trained Fashion-MNIST CNNs);
- landmarks: the ink's centroid in each quadrant and overall, (x1..x5, y1..y5) in pixels, [N, 10];
- a box: the ink's bounding box (x0, y0, x1, y1) in pixels, [N, 4].
"""

from __future__ import annotations

import torch
from torch import nn

SIDE = 8


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """(images [N, 1, 8, 8] in [0, 1], labels), in a seeded order."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(data.target, dtype=torch.int64)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    return images[order], labels[order]


def landmarks(images: torch.Tensor) -> torch.Tensor:
    """[N, 10]: the ink's centroid in the four quadrants and in the whole image, xs then ys, in pixels."""
    ink = images[:, 0]
    ys, xs = torch.meshgrid(torch.arange(SIDE, dtype=torch.float32), torch.arange(SIDE, dtype=torch.float32), indexing="ij")
    half = SIDE // 2
    regions = [(slice(0, half), slice(0, half)), (slice(0, half), slice(half, SIDE)), (slice(half, SIDE), slice(0, half)),
               (slice(half, SIDE), slice(half, SIDE)), (slice(0, SIDE), slice(0, SIDE))]
    points = []
    for rows, cols in regions:
        weight = ink[:, rows, cols].flatten(1) + 1e-3  # an empty quadrant falls back to its centre
        total = weight.sum(1)
        points.append(((weight * xs[rows, cols].flatten()).sum(1) / total, (weight * ys[rows, cols].flatten()).sum(1) / total))
    return torch.stack([x for x, _ in points] + [y for _, y in points], 1)


def boxes(images: torch.Tensor) -> torch.Tensor:
    """[N, 4]: (x0, y0, x1, y1) in pixels of the pixels above a quarter of full ink."""
    ink = images[:, 0] > 0.25
    positions = torch.arange(SIDE, dtype=torch.float32)
    big = float(SIDE)
    rows, cols = ink.any(2), ink.any(1)
    return torch.stack([
        torch.where(cols, positions, big).min(1).values, torch.where(rows, positions, big).min(1).values,
        torch.where(cols, positions, -1.0).max(1).values, torch.where(rows, positions, -1.0).max(1).values,
    ], 1)


def _fit(outputs: int, images: torch.Tensor, loss_of, steps: int) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(SIDE * SIDE, 32), nn.ReLU(), nn.Linear(32, outputs))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):  # full batch: a handful of images
        optimizer.zero_grad()
        loss_of(model(images)).backward()
        optimizer.step()
    return model.eval()


def weak_classifier(images: torch.Tensor, labels: torch.Tensor) -> nn.Module:
    """Fitted on the first 30 images only: confident on what it saw, about 78% right on the rest."""
    seen, truth = images[:30], labels[:30]
    return _fit(10, seen, lambda scores: nn.functional.cross_entropy(scores, truth), 200)


def untrained_classifier() -> nn.Module:
    """The same architecture with its initial (random) weights."""
    return _fit(10, torch.zeros(1, 1, SIDE, SIDE), lambda scores: scores.sum() * 0, 0)


def regressor(targets_of, images: torch.Tensor, width: int) -> nn.Module:
    seen = images[:300]
    targets = targets_of(seen)
    return _fit(width, seen, lambda predicted: nn.functional.l1_loss(predicted, targets), 200)


class DigitsFace(nn.Module):
    """ONet's layout on digits: a box [N, 4], landmarks [N, 10] and class scores, here the weak
    classifier's 10 raw logits (ONet's [N, 2] are probabilities, which are read as such anyway)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        super().__init__()
        self.box = regressor(boxes, images, 4)
        self.landmarks = regressor(landmarks, images, 10)
        self.classes = weak_classifier(images, labels)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.box(x), self.landmarks(x), self.classes(x)
