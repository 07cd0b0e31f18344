"""Small reference networks for the engine machinery (no trained product models exist yet).

They exercise what the product models will use: a 2D landmark-style net with a learned affine
``grid_sample`` (bilinear, zeros padding, align_corners False) and a batched MatMul, and a 3D
volume net with Conv3d, MaxPool3d, ConvTranspose3d and a skip-connected decoder. Weights come from
a fixed seed, so parity tests and benchmarks are reproducible. Their sizes are picked so the CPU
benchmark is meaningful (tens of MFLOP to a few GFLOP per call) and the test suite stays fast.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional

log = logging.getLogger(__name__)


class LandmarkNet2D(nn.Module):
    """Film (N, 1, H, W) -> K landmark heatmaps (N, K, H/4, W/4).

    A small encoder predicts an affine transform; ``grid_sample`` re-samples the film with it (a
    spatial-transformer step) and a second encoder turns the aligned film into heatmaps. The sampling
    grid is built with a MatMul against a constant base grid (ONNX ``AffineGrid`` needs opset 20).
    """

    def __init__(self, size: int = 128, width: int = 16, landmarks: int = 8) -> None:
        super().__init__()
        self.size = size
        self.loc = nn.Sequential(
            nn.Conv2d(1, width, 5, stride=2, padding=2),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(width, 6),
        )
        last = self.loc[-1]
        assert isinstance(last, nn.Linear)
        with torch.no_grad():  # start near identity, as a trained STN would be
            last.weight.mul_(0.01)
            last.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]))
        lin = torch.linspace(-1.0 + 1.0 / size, 1.0 - 1.0 / size, size)  # align_corners=False centres
        gy, gx = torch.meshgrid(lin, lin, indexing="ij")
        base = torch.stack([gx, gy, torch.ones_like(gx)], dim=-1).reshape(-1, 3)
        self.base_grid: torch.Tensor
        self.register_buffer("base_grid", base)
        self.head = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(2 * width, landmarks, 1),
        )

    def forward(self, film: torch.Tensor) -> torch.Tensor:
        theta = self.loc(film).view(-1, 2, 3)
        grid = torch.matmul(self.base_grid, theta.transpose(1, 2)).view(-1, self.size, self.size, 2)
        aligned = functional.grid_sample(
            film, grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )
        return self.head(aligned)


class VolumeNet3D(nn.Module):
    """Volume (N, 1, D, D, D) -> occupancy logits (N, 1, D, D, D): a tiny 3D encoder-decoder."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.enc1 = nn.Sequential(nn.Conv3d(1, width, 3, padding=1), nn.ReLU())
        self.enc2 = nn.Sequential(nn.MaxPool3d(2), nn.Conv3d(width, 2 * width, 3, padding=1), nn.ReLU())
        self.up = nn.ConvTranspose3d(2 * width, width, 2, stride=2)
        self.dec = nn.Sequential(nn.Conv3d(2 * width, width, 3, padding=1), nn.ReLU(), nn.Conv3d(width, 1, 1))

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(volume)
        e2 = self.enc2(e1)
        return self.dec(torch.cat([self.up(e2), e1], dim=1))


@dataclass(frozen=True)
class ReferenceModel:
    """A reference network ready for export: the module (eval mode), an example input, names, metadata."""

    name: str
    module: nn.Module
    example: tuple[torch.Tensor, ...]
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    metadata: dict[str, Any]


def build_reference(name: str, *, seed: int = 1234, batch: int = 1, scale: str = "test") -> ReferenceModel:
    """Build reference model ``name`` ("landmark2d" or "volume3d") with seeded weights.

    ``scale="test"`` gives small inputs for the test suite; ``"bench"`` gives the sizes benchmarked in
    bench/RESULTS_engines.md (2D: 256x256 film, 3D: 64^3 volume).
    """
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    if name == "landmark2d":
        size = 64 if scale == "test" else 256
        module: nn.Module = LandmarkNet2D(size=size, width=16 if scale == "test" else 32)
        example = (torch.rand(batch, 1, size, size, generator=gen),)
        geometry = {"film": {"shape": [1, size, size], "pixel_spacing_mm": 0.5}}
        inputs, outputs = ("film",), ("heatmaps",)
    elif name == "volume3d":
        d = 16 if scale == "test" else 64
        module = VolumeNet3D(width=8 if scale == "test" else 16)
        example = (torch.rand(batch, 1, d, d, d, generator=gen),)
        geometry = {"volume": {"shape": [1, d, d, d], "voxel_mm": 1.0}}
        inputs, outputs = ("volume",), ("occupancy",)
    else:
        raise KeyError(f"unknown reference model {name!r}; known: {', '.join(REFERENCE_NAMES)}")
    module.eval()
    _randomise_bn(module, gen)
    return ReferenceModel(
        name=f"ref-{name}",
        module=module,
        example=example,
        input_names=inputs,
        output_names=outputs,
        metadata={"version": "0.0.0-reference", "training_seed": seed, "input_geometry": geometry},
    )


def _randomise_bn(module: nn.Module, gen: torch.Generator) -> None:
    """Give BatchNorm non-trivial running stats so parity covers the folded form."""
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d | nn.BatchNorm3d):
            assert m.running_mean is not None and m.running_var is not None
            with torch.no_grad():
                m.running_mean.copy_(torch.rand(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=gen))


REFERENCE_NAMES: tuple[str, ...] = ("landmark2d", "volume3d")
