"""Small real architectures for benchmarks, trained here in seconds (nothing is downloaded)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def conv_bn(cin: int, cout: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class CnnBN(nn.Module):
    def __init__(self, channels: int = 1, classes: int = 10, width: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(conv_bn(channels, width), conv_bn(width, width * 2, 2), conv_bn(width * 2, width * 2, 2))
        self.head = nn.Linear(width * 2, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn(cin, cout, stride), nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.shortcut = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)) if stride != 1 or cin != cout else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


class ResNetSmall(nn.Module):
    def __init__(self, channels: int = 1, classes: int = 10, width: int = 32) -> None:
        super().__init__()
        self.stem = conv_bn(channels, width)
        self.layers = nn.Sequential(BasicBlock(width, width, 1), BasicBlock(width, width * 2, 2), BasicBlock(width * 2, width * 4, 2))
        self.head = nn.Linear(width * 4, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(self.layers(self.stem(x)), 1), 1))


class DenseBlockNet(nn.Module):
    """DenseNet-style: each layer's output is concatenated onto its input along channels."""

    def __init__(self, channels: int = 1, classes: int = 10, growth: int = 16) -> None:
        super().__init__()
        self.stem = conv_bn(channels, 32, 2)
        self.dense = nn.ModuleList([conv_bn(32 + i * growth, growth) for i in range(3)])
        self.transition = conv_bn(32 + 3 * growth, 64, 2)
        self.head = nn.Linear(64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for layer in self.dense:
            x = torch.cat([x, layer(x)], 1)
        return self.head(self.transition(x).mean((2, 3)))


class DepthwiseSeparable(nn.Module):
    def __init__(self, channels: int = 1, classes: int = 10) -> None:
        super().__init__()
        self.net = nn.Sequential(
            conv_bn(channels, 32, 2),
            conv_bn(32, 32, groups=32), nn.Conv2d(32, 64, 1), nn.ReLU(),
            conv_bn(64, 64, 2, groups=64), nn.Conv2d(64, 128, 1), nn.ReLU(),
        )
        self.head = nn.Linear(128, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.net(x).mean((2, 3)))


class MLP(nn.Module):
    def __init__(self, features: int = 64, classes: int = 10, hidden: int = 256) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class RowLSTM(nn.Module):
    """Reads an image row by row."""

    def __init__(self, row: int = 8, classes: int = 10, hidden: int = 64) -> None:
        super().__init__()
        self.lstm = nn.LSTM(row, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x.squeeze(1))
        return self.head(out[:, -1])


def train(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, epochs: int, lr: float = 2e-3, batch: int = 128) -> nn.Module:
    return _fit(model, len(labels), epochs, lambda index: nn.functional.cross_entropy(model(images[index]), labels[index]), lr, batch)


def _fit(model: nn.Module, count: int, epochs: int, loss_of: Callable[[torch.Tensor], torch.Tensor], lr: float, batch: int) -> nn.Module:
    """Adam over seeded shuffles of `count` samples; `loss_of(index)` is a minibatch's loss."""
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(count)
        for start in range(0, count, batch):
            optimizer.zero_grad()
            loss_of(order[start : start + batch]).backward()
            optimizer.step()
    return model.eval()


class ClassAndBox(nn.Module):
    """Two outputs from one trunk: class logits, and the box of the ink (x0, y0, x1, y1, about [0, 1])."""

    def __init__(self, channels: int = 1, classes: int = 10, width: int = 32, side: int = 28) -> None:
        super().__init__()
        self.features = nn.Sequential(conv_bn(channels, width), conv_bn(width, width * 2, 2), conv_bn(width * 2, width * 2, 2))
        self.classes = nn.Linear(width * 2, classes)
        cells = (side // 4) ** 2  # two stride-2 convs; the box head keeps where the features are
        # A linear end: a sigmoid here saturated in training (outputs pinned at 0 and 1), which no variant can move.
        self.box = nn.Sequential(nn.Flatten(), nn.Linear(width * 2 * cells, 64), nn.ReLU(), nn.Linear(64, 4))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.features(x)
        return self.classes(features.mean((2, 3))), self.box(features)


def ink_boxes(images: torch.Tensor, threshold: float) -> torch.Tensor:
    """[N, 4] (x0, y0, x1, y1) / (side - 1) of the pixels above `threshold`; the whole image if there are none."""
    ink = images[:, 0] > threshold
    side = images.shape[-1]
    positions = torch.arange(side)
    boxes = []
    for rows, cols in zip(ink.any(2), ink.any(1)):
        if not rows.any():
            boxes.append([0, 0, side - 1, side - 1])
            continue
        ys, xs = positions[rows], positions[cols]
        boxes.append([xs.min(), ys.min(), xs.max(), ys.max()])
    return torch.tensor(boxes, dtype=torch.float32) / (side - 1)


def train_class_and_box(model: ClassAndBox, images: torch.Tensor, labels: torch.Tensor, boxes: torch.Tensor, epochs: int,
                        lr: float = 2e-3, batch: int = 128) -> ClassAndBox:
    def loss_of(index: torch.Tensor) -> torch.Tensor:
        scores, box = model(images[index])
        return nn.functional.cross_entropy(scores, labels[index]) + 3 * nn.functional.l1_loss(box, boxes[index])

    return _fit(model, len(labels), epochs, loss_of, lr, batch)
