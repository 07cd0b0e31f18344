"""``xr3d train recon``: the reconstruction GAN on compact samples, within a wall-clock budget.

Each step: a batch of samples (training seeds only); films encoded; points decoded (uniform, near-surface
and one dense 16^3 block per sample); losses = HU L1 + label CE + soft Dice (surface points weighted x2)
+ ``w_proj`` x (1 - NCC) of a DRR of the prediction along rays of each present film against the film
+ ``w_adv`` x least-squares adversarial term of a 3D patch discriminator on the dense blocks, ramped in
over the second half of training. The lateral view is dropped with probability ``p_drop_lat`` (AP-only
mode, ``present`` flag). Schedules follow the fraction of the budget used (or of ``--steps``).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from export.recon import losses as L
from export.recon.data import TRAIN_SEEDS
from export.recon.dataset import ReconSample, block_indices, index_to_norm, load_samples, sample_points
from export.recon.model import PatchDiscriminator, ReconNet

log = logging.getLogger(__name__)

MODEL_VERSION = "recon-1.0"


@dataclass(frozen=True)
class TrainConfig:
    data: Path
    out: Path
    seed: int
    minutes: float = 40.0
    steps: int | None = None
    models_dir: Path | None = None
    max_samples: int | None = None
    threads: int = 1
    batch: int = 2
    n_uniform: int = 1024
    n_surface: int = 2048
    rays: int = 64
    ray_samples: int = 32
    lr: float = 2e-3
    w_proj: float = 0.1
    w_adv: float = 0.02
    adv_start: float = 0.6  # fraction of training when the adversarial term starts ramping in
    p_drop_lat: float = 0.25
    no_adv: bool = False
    no_proj: bool = False
    ap_only: bool = False
    export: bool = True
    rescan_steps: int = 0  # > 0: look for new samples every so many steps
    hidden: int = 64  # decoder MLP width


@dataclass(frozen=True)
class TrainResult:
    steps: int
    seconds: float
    train_seeds: tuple[int, ...]
    final: dict[str, float]
    checkpoint: Path
    loss_plot: Path
    report: Path
    onnx: tuple[Path, ...] = ()
    parity: dict[str, float] = field(default_factory=dict)


def _lr(frac: float, base: float) -> float:
    warm = 0.03
    if frac < warm:
        return base * max(frac / warm, 0.05)
    return base * (0.03 + 0.97 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, (frac - warm) / (1.0 - warm)))))


def _batch_tensors(
    batch: list[int],
    feats: list[torch.Tensor],
    samples: list[ReconSample],
    rng: np.random.Generator,
    cfg: TrainConfig,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    present = np.ones((len(batch), 2), np.float32)
    for b in range(len(batch)):
        if cfg.ap_only or rng.random() < cfg.p_drop_lat:
            present[b, 1] = 0.0
    return (
        torch.stack([feats[i] for i in batch]).float(),
        torch.from_numpy(np.stack([samples[i].mats for i in batch])),
        torch.from_numpy(present),
    )


def encode_all(net: ReconNet, samples: list[ReconSample]) -> list[torch.Tensor]:
    """Fixed encoder features of every sample, once (float16 to halve the memory)."""
    out = []
    with torch.no_grad():
        for s in samples:
            out.append(net.encode(torch.from_numpy(s.films[None]))[0].half())
    return out


def train_step(
    net: ReconNet,
    disc: PatchDiscriminator,
    opt_d: torch.optim.Optimizer,
    ids: list[int],
    feats: list[torch.Tensor],
    samples: list[ReconSample],
    rng: np.random.Generator,
    cfg: TrainConfig,
    adv_weight: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    feat, mats, present = _batch_tensors(ids, feats, samples, rng, cfg)
    batch = [samples[i] for i in ids]
    # The dense blocks feed the discriminator; before the adversarial phase they would only cost time.
    with_block = not cfg.no_adv and adv_weight > 0
    idx = [
        np.concatenate(
            [sample_points(s, rng, cfg.n_uniform, cfg.n_surface)]
            + ([block_indices(s, rng)] if with_block else [])
        )
        for s in batch
    ]
    pts = torch.from_numpy(np.stack([index_to_norm(i) for i in idx]))
    hu_t = torch.from_numpy(np.stack([s.hu.reshape(-1)[i] for s, i in zip(batch, idx, strict=True)]))
    lab_t = torch.from_numpy(np.stack([s.labels.reshape(-1)[i] for s, i in zip(batch, idx, strict=True)]))
    weight = torch.ones(hu_t.shape)
    weight[:, cfg.n_uniform : cfg.n_uniform + cfg.n_surface] = 2.0
    hu_p, logits = net.decoder(feat, mats, present, pts)
    l_hu = L.hu_l1(hu_p, hu_t, weight)
    l_ce, l_dice = L.label_loss(logits, lab_t, weight)
    total = 2.0 * l_hu + l_ce + l_dice
    parts = {"hu": l_hu.item(), "ce": l_ce.item(), "dice": l_dice.item()}

    if not cfg.no_proj:
        l_proj = _projection_loss(net, feat, mats, present, rng, cfg)
        total = total + cfg.w_proj * l_proj
        parts["proj"] = l_proj.item()

    if with_block:
        nb = 16**3
        fake = hu_p[:, -nb:].reshape(-1, 1, 16, 16, 16)
        real = L.hu_target(hu_t[:, -nb:]).reshape(-1, 1, 16, 16, 16)
        opt_d.zero_grad(set_to_none=True)
        ld = L.d_loss(disc(real), disc(fake.detach()))
        ld.backward()
        opt_d.step()
        lg = L.g_adv_loss(disc(fake))
        total = total + adv_weight * lg
        parts.update({"adv_g": lg.item(), "adv_d": ld.item()})
    parts["total"] = total.item()
    return total, parts


def _projection_loss(
    net: ReconNet,
    feat: torch.Tensor,
    mats: torch.Tensor,
    present: torch.Tensor,
    rng: np.random.Generator,
    cfg: TrainConfig,
) -> torch.Tensor:
    """1 - NCC between a DRR of the prediction and the film, on a random ~29 mm window of each film."""
    b, v = mats.shape[0], mats.shape[1]
    pts_all, meta = [], []
    for bi in range(b):
        rows = []
        for vi in range(v):
            centre = rng.uniform(-0.45, 0.45, 2)
            pix = torch.from_numpy((centre + rng.uniform(-0.15, 0.15, (cfg.rays, 2))).astype(np.float32))
            p, ok, step = L.ray_points(mats[bi, vi], pix, cfg.ray_samples, jitter=True)
            rows.append(p.reshape(-1, 3))
            meta.append((bi, vi, pix, ok, step))
        pts_all.append(torch.cat(rows))
    pts = torch.stack(pts_all)
    hu_p, _ = net.decoder(feat, mats, present, pts)
    n_ray = cfg.rays * cfg.ray_samples
    terms = []
    for bi, vi, pix, ok, step in meta:
        if present[bi, vi] < 0.5 or int(ok.sum()) < 8:
            continue
        along = hu_p[bi, vi * n_ray : (vi + 1) * n_ray].reshape(cfg.rays, cfg.ray_samples)
        with torch.no_grad():
            film = F.grid_sample(feat[bi, vi : vi + 1, :1], pix.view(1, 1, -1, 2), align_corners=True).view(
                -1
            )
        terms.append(1.0 - L.projection_ncc(along[ok], step[ok], film[ok]))
    if not terms:
        return torch.zeros(())
    return torch.stack(terms).mean()


def train_recon(cfg: TrainConfig) -> TrainResult:
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    cfg.out.mkdir(parents=True, exist_ok=True)
    samples = load_samples(cfg.data, TRAIN_SEEDS, cfg.max_samples)
    if not samples:
        raise FileNotFoundError(f"no training samples in {cfg.data}")
    net = ReconNet(hidden=cfg.hidden)
    disc = PatchDiscriminator()
    feats = encode_all(net, samples)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
    opt_d = torch.optim.Adam(disc.parameters(), lr=2e-4, betas=(0.5, 0.999))
    budget = cfg.minutes * 60.0
    history: dict[str, list[float]] = {}
    t0 = time.perf_counter()
    step = 0
    net.train()
    while True:
        frac = step / cfg.steps if cfg.steps else (time.perf_counter() - t0) / budget
        if frac >= 1.0:
            break
        lr = _lr(frac, cfg.lr)
        for g in opt.param_groups:
            g["lr"] = lr
        adv_w = 0.0 if frac < cfg.adv_start else cfg.w_adv * min(1.0, (frac - cfg.adv_start) / 0.2)
        if cfg.rescan_steps and step % cfg.rescan_steps == 0 and step > 0:
            # Samples still being generated join the pool as they appear (data generation runs alongside).
            have = frozenset((s.seed, s.pose) for s in samples)
            new = load_samples(cfg.data, TRAIN_SEEDS, None, skip=have)
            if cfg.max_samples is None and new:
                samples.extend(new)
                feats.extend(encode_all(net, new))
        ids = [int(i) for i in rng.integers(0, len(samples), cfg.batch)]
        loss, parts = train_step(net, disc, opt_d, ids, feats, samples, rng, cfg, adv_w)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
        opt.step()
        for k, val in parts.items():
            history.setdefault(k, []).append(val)
        step += 1
        if step % 25 == 0:
            el = time.perf_counter() - t0
            recent = {k: float(np.mean(v[-25:])) for k, v in history.items()}
            log.info(
                "step %d  %.0f s (%.2f s/step)  lr %.1e  adv %.3f  %s",
                step,
                el,
                el / step,
                lr,
                adv_w,
                "  ".join(f"{k} {v:.4f}" for k, v in recent.items()),
            )
    seconds = time.perf_counter() - t0
    ckpt = cfg.out / "recon.pt"
    torch.save({"net": net.state_dict(), "config": _cfg_json(cfg), "steps": step}, ckpt)
    plot = cfg.out / "loss_curve.png"
    _plot(history, plot)
    final = {k: float(np.mean(v[-50:])) for k, v in history.items()}
    onnx_paths: tuple[Path, ...] = ()
    parity: dict[str, float] = {}
    if cfg.export:
        from export.recon.onnx_io import export_recon

        onnx_paths, parity = export_recon(net, cfg.models_dir or cfg.out, cfg.seed, _cfg_json(cfg))
    report = cfg.out / "train_report.json"
    seeds = tuple(sorted({s.seed for s in samples}))
    report.write_text(
        json.dumps(
            {
                "model_version": MODEL_VERSION,
                "config": _cfg_json(cfg),
                "steps": step,
                "seconds": round(seconds, 1),
                "samples": len(samples),
                "sample_files": [f"recon_{s.seed}_{s.pose}.npz" for s in samples],
                "anatomies": len(seeds),
                "seed_range": [min(seeds), max(seeds)],
                "final_losses": final,
                "onnx": [str(p) for p in onnx_paths],
                "parity_max_abs_diff": parity,
                "history_every_25": {k: v[::25] for k, v in history.items()},
            },
            indent=2,
        )
    )
    return TrainResult(step, seconds, seeds, final, ckpt, plot, report, onnx_paths, parity)


def _cfg_json(cfg: TrainConfig) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}


def _plot(history: dict[str, list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in ("total", "hu", "ce", "dice", "proj", "adv_g", "adv_d") if k in history]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3.0))
    for ax, k in zip(np.atleast_1d(axes), keys, strict=True):
        v = np.asarray(history[k])
        w = max(1, len(v) // 100)
        sm = np.convolve(v, np.ones(w) / w, mode="valid") if len(v) >= w else v
        ax.plot(v, alpha=0.25)
        ax.plot(np.arange(len(sm)) + w - 1, sm)
        ax.set_title(k)
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
