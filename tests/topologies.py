"""One tiny model per channel topology that structured pruning must understand, built in milliseconds.

`TOPOLOGIES` maps a name to (builder, input shapes). Builders return eval-mode nn.Modules with
seeded weights; tests trace or script them. Channel counts are multiples of 8 so that 50% pruning
rounded to 8 removes something everywhere it is allowed to. `trained` gives a single-input model
trained briefly on a synthetic task, for behaviour that only trained weights show.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(12, 32), nn.Linear(32, 32), nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


class ConvBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32)
        self.head = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.head(x.mean((2, 3)))


class ResidualDownsample(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.branch = nn.Sequential(
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32),
        )
        self.downsample = nn.Sequential(nn.Conv2d(16, 32, 1, stride=2), nn.BatchNorm2d(32))
        self.head = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(self.branch(x) + self.downsample(x))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class DenseConcat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.grow1 = nn.Conv2d(16, 16, 3, padding=1)
        self.grow2 = nn.Conv2d(32, 16, 3, padding=1)
        self.transition = nn.Conv2d(48, 16, 1)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.cat([x, torch.relu(self.grow1(x))], 1)
        x = torch.cat([x, torch.relu(self.grow2(x))], 1)
        return self.head(torch.relu(self.transition(x)).mean((2, 3)))


class DepthwiseSeparable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.depthwise = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16), nn.ReLU())
        self.pointwise = nn.Sequential(nn.Conv2d(16, 32, 1), nn.BatchNorm2d(32), nn.ReLU())
        self.head = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pointwise(self.depthwise(self.stem(x))).mean((2, 3)))


class FlattenLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.fc1, self.fc2 = nn.Linear(16 * 4 * 4, 32), nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(torch.relu(self.conv(x)), 4)
        return self.fc2(torch.relu(self.fc1(torch.flatten(x, 1))))


class TransformerFFN(nn.Module):
    """Pre-norm feed-forward block on [batch, tokens, 16]: only the 64-wide hidden dim may shrink."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(16)
        self.up, self.down = nn.Linear(16, 64), nn.Linear(64, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(F.gelu(self.up(self.norm(x))))


class AttentionBlock(nn.Module):
    """Pre-norm encoder block on [batch, tokens, 32]: 4 heads of 8 (separate q/k/v, as BERT), FFN 64 wide;
    attention written out (matmul, softmax) or `fused` (scaled_dot_product_attention)."""

    def __init__(self, heads: int = 4, fused: bool = False) -> None:
        super().__init__()
        self.heads, self.fused = heads, fused
        self.norm1, self.norm2 = nn.LayerNorm(32), nn.LayerNorm(32)
        self.query, self.key, self.value, self.proj = (nn.Linear(32, 32) for _ in range(4))
        self.up, self.down = nn.Linear(32, 64), nn.Linear(64, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, _ = x.shape
        h = self.norm1(x)
        q = self.query(h).view(n, length, self.heads, 8).transpose(1, 2)
        k = self.key(h).view(n, length, self.heads, 8).transpose(1, 2)
        v = self.value(h).view(n, length, self.heads, 8).transpose(1, 2)
        if self.fused:
            mixed = F.scaled_dot_product_attention(q, k, v)
        else:
            mixed = torch.softmax(q @ k.transpose(-1, -2) / 8**0.5, -1) @ v
        x = x + self.proj(mixed.transpose(1, 2).reshape(n, length, self.heads * 8))
        return x + self.down(F.gelu(self.up(self.norm2(x))))


class ShapeConstant(nn.Module):
    """`view(size(0), 16*4*4)` traces the 256 into the graph as a constant."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(torch.relu(self.conv(x)), 4)
        return self.fc(x.view(x.size(0), 16 * 4 * 4))


class TwoInputsTupleOutput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.image = nn.Conv2d(3, 16, 3, padding=1)
        self.table = nn.Linear(6, 16)
        self.mix = nn.Linear(32, 24)
        self.out_a, self.out_b = nn.Linear(24, 3), nn.Linear(24, 2)

    def forward(self, image: torch.Tensor, table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = torch.relu(self.image(image)).mean((2, 3))
        mixed = torch.relu(self.mix(torch.cat([pooled, torch.relu(self.table(table))], 1)))
        return self.out_a(mixed), self.out_b(mixed)


IMAGE = (3, 8, 8)
TOPOLOGIES: dict[str, tuple[Callable[[], nn.Module], list[tuple[int, ...]]]] = {
    "mlp": (MLP, [(12,)]),
    "conv_bn": (ConvBN, [IMAGE]),
    "residual_downsample": (ResidualDownsample, [IMAGE]),
    "dense_concat": (DenseConcat, [IMAGE]),
    "depthwise_separable": (DepthwiseSeparable, [IMAGE]),
    "flatten_linear": (FlattenLinear, [IMAGE]),
    "transformer_ffn": (TransformerFFN, [(6, 16)]),
    "attention_block": (AttentionBlock, [(6, 32)]),
    "fused_attention_block": (lambda: AttentionBlock(fused=True), [(6, 32)]),
    "shape_constant": (ShapeConstant, [IMAGE]),
    "two_inputs_tuple_output": (TwoInputsTupleOutput, [IMAGE, (6,)]),
}


def build(name: str, batch: int = 16, seed: int = 0) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """The model in eval mode with non-trivial BN statistics, and a random input batch."""
    torch.manual_seed(seed)
    builder, shapes = TOPOLOGIES[name]
    model = builder().eval()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
    inputs = tuple(torch.randn(batch, *shape) for shape in shapes)
    return model, inputs


def trained(name: str, batch: int = 16, seed: int = 0, steps: int = 150) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """The model trained (under a second) to tell noisy copies of 5 random prototypes apart, and
    `batch` fresh samples of that task. Its weights and BatchNorm statistics are those of a trained
    net: channels are correlated and the statistics fit the data."""
    model, _ = build(name, seed=seed)
    (shape,) = TOPOLOGIES[name][1]
    inputs, labels = _prototype_samples(shape, 1000 + batch, seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        index = torch.randint(0, 1000, (64,), generator=generator)
        optimizer.zero_grad()
        F.cross_entropy(model(inputs[index]), labels[index]).backward()
        optimizer.step()
    return model.eval(), (inputs[1000:],)


def _prototype_samples(shape: tuple[int, ...], count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    prototypes = torch.randn(5, *shape, generator=generator)
    labels = torch.randint(0, 5, (count,), generator=generator)
    return prototypes[labels] + torch.randn(count, *shape, generator=generator), labels
