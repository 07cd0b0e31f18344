"""Losses of the reconstruction GAN: voxel HU, labels (CE + soft Dice, surface-weighted), projection
consistency (a differentiable DRR of the prediction through the films' own geometry, NCC against the
film) and the least-squares adversarial terms."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

HU_MIN, HU_MAX = -1.0, 2.0  # target range in units of 1000 HU


def hu_target(hu: Tensor) -> Tensor:
    return torch.clamp(hu.float() / 1000.0, HU_MIN, HU_MAX)


def hu_l1(pred: Tensor, hu: Tensor, weight: Tensor) -> Tensor:
    return (weight * (pred - hu_target(hu)).abs()).sum() / weight.sum()


def label_loss(
    logits: Tensor, labels: Tensor, weight: Tensor, class_w: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Weighted cross-entropy (per point ``weight`` x per class ``class_w``) and 1 - mean soft Dice over
    the four bones (classes 1-4)."""
    n_cls = logits.shape[-1]
    lg = logits.reshape(-1, n_cls)
    y = labels.reshape(-1).long()
    w = weight.reshape(-1)
    if class_w is not None:
        w = w * class_w[y]
    ce = (F.cross_entropy(lg, y, reduction="none") * w).sum() / w.sum()
    p = torch.softmax(lg, dim=-1)[:, 1:]
    oh = F.one_hot(y, n_cls).float()[:, 1:]
    inter = (p * oh).sum(0)
    dice = (2.0 * inter + 1.0) / (p.sum(0) + oh.sum(0) + 1.0)
    return ce, 1.0 - dice.mean()


def ray_points(mat: Tensor, pix: Tensor, n_samples: int, jitter: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Points along the rays of normalised frame pixels ``pix`` (R, 2) through the cube [-1, 1]^3.

    ``mat`` (3, 4) maps normalised cube -> normalised frame. Returns points (R, S, 3), a mask (R,) of rays
    that cross the cube and the step length (R,) in normalised cube units."""
    a, t = mat[:, :3], mat[:, 3]
    ainv = torch.linalg.inv(a)
    src = -(ainv @ t)  # the point M maps to (0, 0, 0): the source
    hom = torch.cat([pix, torch.ones_like(pix[:, :1])], dim=1)
    d = hom @ ainv.T  # (R, 3) directions (any scale)
    d = d / d.norm(dim=1, keepdim=True)
    # Slab intersection with [-1, 1]^3.
    inv = 1.0 / torch.where(d.abs() < 1e-9, torch.full_like(d, 1e-9), d)
    t0 = (-1.0 - src) * inv
    t1 = (1.0 - src) * inv
    t_in = torch.minimum(t0, t1).amax(dim=1)
    t_out = torch.maximum(t0, t1).amin(dim=1)
    ok = t_out > t_in + 1e-3
    t_out = torch.where(ok, t_out, t_in + 1e-3)
    u = (torch.arange(n_samples, dtype=mat.dtype) + 0.5) / n_samples
    if jitter:
        u = u + (torch.rand(n_samples) - 0.5) / n_samples
    ts = t_in[:, None] + (t_out - t_in)[:, None] * u[None, :]
    pts = src[None, None, :] + ts[..., None] * d[:, None, :]
    step = (t_out - t_in) / n_samples
    return pts.clamp(-1.0, 1.0), ok, step


def ncc(a: Tensor, b: Tensor) -> Tensor:
    a = a - a.mean()
    b = b - b.mean()
    return (a * b).sum() / (a.norm() * b.norm() + 1e-6)


def projection_ncc(hu_along: Tensor, step: Tensor, film_vals: Tensor) -> Tensor:
    """NCC between the line integrals of predicted attenuation (water-relative density, HU/1000 + 1)
    ``hu_along`` (R, S) and the film brightness at those rays (R,)."""
    mu = torch.relu(hu_along + 1.0)
    drr = mu.sum(dim=1) * step
    return ncc(drr, film_vals)


def d_loss(d_real: Tensor, d_fake: Tensor) -> Tensor:
    return 0.5 * (((d_real - 1.0) ** 2).mean() + (d_fake**2).mean())


def g_adv_loss(d_fake: Tensor) -> Tensor:
    return 0.5 * ((d_fake - 1.0) ** 2).mean()
