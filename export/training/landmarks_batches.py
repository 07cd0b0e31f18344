"""Training batches and losses of the two-stage landmark model (used by :mod:`export.training.landmarks`).

A batch is drawn from prepared cases (:class:`PreparedCase`: the whole-film sample and jittered crops of
one simulated case); every draw gets a freshly sampled, recorded augmentation chain and its Gaussian
heatmap targets, so no two steps see the same pixels.

Losses:

* :func:`heatmap_loss`: spatial cross-entropy of the heatmap logits against the Gaussian targets
  normalised to sum 1 (hidden landmarks and, for crops, the landmarks of other regions carry no weight);
* :func:`coord_loss`: mean absolute error (mm) of the soft-argmax of the same logits (the expected
  position under the spatial softmax) against the exact landmark. The cross-entropy alone changes by only
  ~0.03 nats when a 1 mm-cell prediction is 0.5 mm off, a weak signal for sub-millimetre placement; the
  soft-argmax term is proportional to the error itself (integral regression, Sun et al., ECCV 2018);
* :func:`mask_loss`: BCE + soft Dice on the femur / tibia masks of the samples that have them.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from export.datasets.augment import AugmentConfig, apply, crop_stage_config, sample_augmentation, warp_mask
from export.datasets.heatmaps import encode_heatmaps, to_output
from export.datasets.landmark_samples import REGIONS, CropSample, WholeFilmSample
from export.models.landmark_net import WHOLE_GEOMETRY, NetGeometry

log = logging.getLogger(__name__)

__all__ = [
    "REGION_NAMES",
    "Batch",
    "PreparedCase",
    "coord_loss",
    "crop_batch",
    "heatmap_loss",
    "mask_loss",
    "whole_batch",
]

F32 = NDArray[np.float32]
REGION_NAMES = ("hip", "knee", "ankle")


@dataclass(frozen=True, eq=False)
class PreparedCase:
    seed: int
    whole: WholeFilmSample
    crops: tuple[CropSample, ...]

    @property
    def has_masks(self) -> bool:
        return self.whole.masks_available

    def crops_of(self, region: str) -> tuple[CropSample, ...]:
        return tuple(c for c in self.crops if c.spec.region == region)


@dataclass(frozen=True, eq=False)
class Batch:
    images: torch.Tensor  # (B, 1, H, W)
    heatmaps: torch.Tensor  # (B, 8, h, w)
    weights: torch.Tensor  # (B, 8): 1 where the landmark is a target
    points: torch.Tensor  # (B, 8, 2) heatmap-pixel (col, row) of every landmark (0 where no target)
    masks: torch.Tensor | None  # (B, 2, h, w) or None
    mask_weights: torch.Tensor | None  # (B,)


def _downsample_mask(mask: NDArray[np.bool_], stride: int, shape: tuple[int, int]) -> F32:
    m = mask.astype(np.float32)
    rows, cols = shape
    pad = np.zeros((rows * stride, cols * stride), np.float32)
    pad[: m.shape[0], : m.shape[1]] = m[: rows * stride, : cols * stride]
    return np.asarray(pad.reshape(rows, stride, cols, stride).mean(axis=(1, 3)), np.float32)


def _target_points(landmarks: NDArray[np.float64], mask: NDArray[np.bool_], stride: int) -> F32:
    q = to_output(landmarks, stride)
    q[~mask] = 0.0
    return np.asarray(np.nan_to_num(q), np.float32)


def whole_batch(
    rng: np.random.Generator,
    cases: Sequence[PreparedCase],
    n: int,
    *,
    flips: bool = True,
    p_mask_case: float = 0.0,
) -> Batch:
    """``n`` augmented whole-film samples with stride-4 targets (``flips``: random mirroring, off
    when the samples are mirrored to a canonical side). With probability ``p_mask_case`` a draw comes
    from the cases that have bone masks (few cases carry label volumes; this keeps the mask head fed)."""
    g = WHOLE_GEOMETRY
    cfg = AugmentConfig() if flips else dataclasses.replace(AugmentConfig(), p_flip=0.0)
    with_masks = [c for c in cases if c.has_masks]
    imgs, hms, wts, pts, masks, mw = [], [], [], [], [], []
    for _ in range(n):
        pool = with_masks if with_masks and rng.random() < p_mask_case else cases
        s = pool[int(rng.integers(len(pool)))].whole
        rec = sample_augmentation(
            rng, g.shape, s.landmarks, pixel_mm=g.mm_per_px, config=cfg, out_shape=g.shape
        )
        aug = apply(s.image, s.landmarks, rec, s.visible)
        t = encode_heatmaps(aug.landmarks, aug.visible, g.shape, stride=g.stride, sigma=g.sigma)
        imgs.append(aug.image)
        hms.append(t.heatmaps)
        wts.append(t.mask.astype(np.float32))
        pts.append(_target_points(aug.landmarks, t.mask, g.stride))
        if s.femur_mask is not None and s.tibia_mask is not None:
            fm = _downsample_mask(warp_mask(s.femur_mask, rec), g.stride, g.heatmap_shape)
            tm = _downsample_mask(warp_mask(s.tibia_mask, rec), g.stride, g.heatmap_shape)
            masks.append(np.stack([fm, tm]))
            mw.append(1.0)
        else:
            masks.append(np.zeros((2, *g.heatmap_shape), np.float32))
            mw.append(0.0)
    have = any(w > 0 for w in mw)
    return Batch(
        images=torch.from_numpy(np.stack(imgs)[:, None]),
        heatmaps=torch.from_numpy(np.stack(hms)),
        weights=torch.from_numpy(np.stack(wts)),
        points=torch.from_numpy(np.stack(pts)),
        masks=torch.from_numpy(np.stack(masks)) if have else None,
        mask_weights=torch.tensor(mw, dtype=torch.float32) if have else None,
    )


def crop_batch(
    rng: np.random.Generator,
    cases: Sequence[PreparedCase],
    n: int,
    geometry: NetGeometry,
    *,
    flips: bool = True,
    region_probs: Sequence[float] | None = None,
) -> Batch:
    """``n`` augmented crops (random case; region drawn with ``region_probs`` over hip, knee, ankle, or
    uniformly over the case's crops when None) with ``geometry``'s targets on their region's landmarks."""
    g = geometry
    cfg = crop_stage_config()
    if not flips:
        cfg = dataclasses.replace(cfg, p_flip=0.0)
    probs = None if region_probs is None else np.asarray(region_probs, np.float64) / np.sum(region_probs)
    imgs, hms, wts, pts = [], [], [], []
    for _ in range(n):
        c = cases[int(rng.integers(len(cases)))]
        pool = c.crops
        if probs is not None:
            region = REGION_NAMES[int(rng.choice(len(REGION_NAMES), p=probs))]
            pool = c.crops_of(region) or c.crops
        s = pool[int(rng.integers(len(pool)))]
        rec = sample_augmentation(
            rng, g.shape, s.landmarks, pixel_mm=g.mm_per_px, config=cfg, out_shape=g.shape
        )
        aug = apply(s.image, s.landmarks, rec, s.visible)
        region_mask = np.array([n_ in REGIONS[s.spec.region] for n_ in s.names])
        t = encode_heatmaps(aug.landmarks, aug.visible & region_mask, g.shape, stride=g.stride, sigma=g.sigma)
        imgs.append(aug.image)
        hms.append(t.heatmaps)
        wts.append(t.mask.astype(np.float32))
        pts.append(_target_points(aug.landmarks, t.mask, g.stride))
    return Batch(
        images=torch.from_numpy(np.stack(imgs)[:, None]),
        heatmaps=torch.from_numpy(np.stack(hms)),
        weights=torch.from_numpy(np.stack(wts)),
        points=torch.from_numpy(np.stack(pts)),
        masks=None,
        mask_weights=None,
    )


def heatmap_loss(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Spatial cross-entropy per map (target Gaussians normalised to sum 1), averaged over the maps
    that are targets."""
    b, n, h, w = logits.shape
    logp = torch.log_softmax(logits.reshape(b, n, h * w), dim=-1)
    t = target.reshape(b, n, h * w)
    t = t / t.sum(dim=-1, keepdim=True).clamp(min=1e-12)
    per_map = -(t * logp).sum(dim=-1) * weights
    return per_map.sum() / weights.sum().clamp(min=1.0)


def coord_loss(
    logits: torch.Tensor, points: torch.Tensor, weights: torch.Tensor, mm_per_cell: float
) -> torch.Tensor:
    """Mean Euclidean distance (mm) between the soft-argmax of each target map and its landmark
    (``points`` in heatmap pixels), over the maps that are targets."""
    b, n, h, w = logits.shape
    p = torch.softmax(logits.reshape(b, n, h * w), dim=-1).reshape(b, n, h, w)
    cols = torch.arange(w, dtype=p.dtype)
    rows = torch.arange(h, dtype=p.dtype)
    ex = (p.sum(dim=2) * cols).sum(dim=-1)
    ey = (p.sum(dim=3) * rows).sum(dim=-1)
    d = torch.sqrt((ex - points[..., 0]) ** 2 + (ey - points[..., 1]) ** 2 + 1e-6) * mm_per_cell
    return (d * weights).sum() / weights.sum().clamp(min=1.0)


def mask_loss(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """BCE + soft Dice on the (femur, tibia) masks of the samples that have them."""
    w = weights[:, None, None, None]
    bce = nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
    bce_m = (bce * w).sum() / (w.sum() * logits[0].numel()).clamp(min=1.0)
    p = torch.sigmoid(logits)
    inter = (p * target).sum(dim=(2, 3))
    den = p.sum(dim=(2, 3)) + target.sum(dim=(2, 3))
    dice = 1.0 - (2 * inter + 1.0) / (den + 1.0)
    dice_m = (dice * weights[:, None]).sum() / (2 * weights.sum()).clamp(min=1.0)
    return bce_m + dice_m
