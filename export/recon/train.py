"""``xr3d train recon``: the reconstruction GAN on compact samples, within a wall-clock budget.

Each step: a batch of samples (training seeds only); films encoded (the fixed filter bank once per sample,
the learned CNN every step, end to end); points decoded (uniform, near-surface, near the fibula and patella
surfaces, and one dense 16^3 block per sample); losses = HU L1 + label CE (classes weighted by capped
square-root inverse frequency) + soft Dice (surface points weighted x2)
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

from appliance.recon.orientation import axial_rotation, rotate_mats, to_canonical
from export.recon import losses as L
from export.recon.data import TRAIN_SEEDS
from export.recon.dataset import (
    ReconSample,
    block_indices,
    bone_edge_points,
    index_to_norm,
    load_samples,
    sample_points,
    small_bone_points,
)
from export.recon.model import PatchDiscriminator, ReconNet, load_film_cnn, load_net, widen_first_layer

log = logging.getLogger(__name__)

MODEL_VERSION = "recon-1.11"


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
    learned: int = 16  # learned film-encoder maps (0: the fixed filter bank alone, recon-1.0)
    fine_film: int = 0  # channels of the learned CNN's full-resolution level (0: none, up to recon-1.10)
    n_small: int = 1024  # points near the fibula and patella surfaces per sample
    n_bone: int = 0  # points near the femur and tibia boundaries per sample (recon-1.6: 1024; 0 before)
    # Online hard-point mining (recon-1.7): HARD_POOL x n_hard candidates near the femur and tibia
    # boundaries are decoded without gradients each step and the n_hard worst (label cross-entropy) train.
    n_hard: int = 0
    # Share of those candidates drawn up to HARD_FAR_JITTER voxels off the boundaries, where recon-1.6's
    # gross errors sit (femur "blobs" 5-15 mm beyond the truth's posterior condyles); recon-1.8: 0.25.
    hard_far: float = 0.0
    class_weights: bool = True  # CE weights sqrt(inverse frequency), capped at CLASS_W_MAX
    init_from: Path | None = None  # warm start from a recon.pt (decoder; widened if the encoder grew)
    context: int = 16  # channels of the 3D shape context (export/recon/context.py; 0: none, recon-1.1)
    context_grid: int = 32  # its points per axis (32: 4.6 mm voxels, up to recon-1.4; 48: 3 mm)
    calib_data: Path | None = None  # held-out anatomies for the label-logit calibration after export
    # Knee-canonical frame (appliance/recon/orientation.py): each sample's cube is turned to the knee's
    # measured axial rotation plus N(0, canon_noise_deg), the spread of the rotation the runtime estimates.
    canonical: bool = False
    canon_noise_deg: float = 4.0


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


CLASS_W_MAX = 4.0
HARD_POOL = 4  # candidates per mined point
HARD_JITTER = 2  # voxels around the boundary the candidates come from (errors reach ~2 mm off it)
HARD_FAR_JITTER = 12  # the far candidates' reach (``hard_far``)


def class_weights(samples: list[ReconSample]) -> torch.Tensor:
    """CE weight per class: sqrt(f_ref / f_c), clipped to [1, CLASS_W_MAX], f_c the voxel frequency of the
    class over the samples and f_ref the mean of the femur and tibia frequencies (so background, femur
    and tibia stay ~1 and the small fibula and patella get up to 4x)."""
    counts = np.zeros(5)
    for s in samples[:: max(1, len(samples) // 20)]:
        counts += np.bincount(s.labels.reshape(-1), minlength=5)[:5]
    f = np.maximum(counts / counts.sum(), 1e-6)
    ref = 0.5 * (f[1] + f[2])
    return torch.tensor(np.clip(np.sqrt(ref / f), 1.0, CLASS_W_MAX), dtype=torch.float32)


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


def canonical_rotations(
    batch: list[ReconSample], rng: np.random.Generator, cfg: TrainConfig
) -> list[np.ndarray] | None:
    """Per sample, the turn of the knee-canonical cube (None when training in the aligned cube)."""
    if not cfg.canonical:
        return None
    return [axial_rotation(s.axial_deg + float(rng.normal(0.0, cfg.canon_noise_deg))) for s in batch]


def encode_all(net: ReconNet, samples: list[ReconSample]) -> list[torch.Tensor]:
    """Fixed filter-bank features of every sample, once (float16 to halve the memory)."""
    out = []
    with torch.no_grad():
        for s in samples:
            out.append(net.encoder.fixed(torch.from_numpy(s.films[:, None])).half())
    return out


def full_features(net: ReconNet, fixed: torch.Tensor, films: torch.Tensor) -> torch.Tensor:
    """Cached fixed maps (B, V, N_FIXED, H, W) + the learned CNN's maps of ``films`` (B, V, H, W)."""
    cnn = net.encoder.cnn
    if cnn is None:
        return fixed
    b, v, h, w = films.shape
    learned = cnn(films.reshape(b * v, 1, h, w)).reshape(b, v, -1, h, w)
    return torch.cat([fixed, learned], dim=2)


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
    cls_w: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    fixed, mats, present = _batch_tensors(ids, feats, samples, rng, cfg)
    batch = [samples[i] for i in ids]
    rots = canonical_rotations(batch, rng, cfg)
    if rots is not None:
        turned = [rotate_mats(m, r) for m, r in zip(mats.numpy(), rots, strict=True)]
        mats = torch.from_numpy(np.stack(turned))
    films = torch.from_numpy(np.stack([s.films for s in batch]))
    feat = full_features(net, fixed, films)
    ctx = net.make_context(feat, mats, present)
    # The dense blocks feed the discriminator; before the adversarial phase they would only cost time.
    with_block = not cfg.no_adv and adv_weight > 0
    hard = (
        mine_hard_points(net, feat, mats, present, ctx, batch, rots, rng, cfg.n_hard, cfg.hard_far)
        if cfg.n_hard
        else None
    )
    idx = [
        np.concatenate(
            [sample_points(s, rng, cfg.n_uniform, cfg.n_surface)]
            + ([small_bone_points(s, rng, cfg.n_small)] if cfg.n_small else [])
            + ([bone_edge_points(s, rng, cfg.n_bone)] if cfg.n_bone else [])
            + ([hard[b]] if hard is not None else [])
            + ([block_indices(s, rng)] if with_block else [])
        )
        for b, s in enumerate(batch)
    ]
    pts = _norm_points(idx, rots)
    hu_t = torch.from_numpy(np.stack([s.hu.reshape(-1)[i] for s, i in zip(batch, idx, strict=True)]))
    lab_t = torch.from_numpy(np.stack([s.labels.reshape(-1)[i] for s, i in zip(batch, idx, strict=True)]))
    weight = torch.ones(hu_t.shape)
    n_weighted = cfg.n_surface + cfg.n_small + cfg.n_bone + cfg.n_hard
    weight[:, cfg.n_uniform : cfg.n_uniform + n_weighted] = 2.0
    hu_p, logits = net.decoder(feat, mats, present, pts, ctx)
    l_hu = L.hu_l1(hu_p, hu_t, weight)
    l_ce, l_dice = L.label_loss(logits, lab_t, weight, cls_w)
    total = 2.0 * l_hu + l_ce + l_dice
    parts = {"hu": l_hu.item(), "ce": l_ce.item(), "dice": l_dice.item()}

    if not cfg.no_proj:
        l_proj = _projection_loss(net, feat, mats, present, rng, cfg, ctx)
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


def _norm_points(idx: list[np.ndarray], rots: list[np.ndarray] | None) -> torch.Tensor:
    """Flat voxel indices per sample -> the decoder's points (B, N, 3), turned into the knee-canonical
    cube when training there."""
    norm = [index_to_norm(i) for i in idx]
    if rots is not None:
        norm = [to_canonical(p, r) for p, r in zip(norm, rots, strict=True)]
    return torch.from_numpy(np.stack(norm))


def mine_hard_points(
    net: ReconNet,
    feat: torch.Tensor,
    mats: torch.Tensor,
    present: torch.Tensor,
    ctx: torch.Tensor | None,
    batch: list[ReconSample],
    rots: list[np.ndarray] | None,
    rng: np.random.Generator,
    n: int,
    far: float = 0.0,
) -> list[np.ndarray]:
    """Per sample, the ``n`` flat indices among ``HARD_POOL`` x ``n`` candidates near the femur and tibia
    boundaries (+- ``HARD_JITTER`` voxels; a share ``far`` of them +- ``HARD_FAR_JITTER``) where the current
    network's label cross-entropy is highest.

    Femur Dice is decided by a thin shell of boundary voxels, most of which the network already gets
    right; uniform boundary sampling spends most of its gradient there. The candidates are decoded
    without gradients (about a tenth of a training step's decoder cost)."""
    n_far = round(far * HARD_POOL * n)
    cand = [
        np.concatenate(
            [bone_edge_points(s, rng, HARD_POOL * n - n_far, jitter=HARD_JITTER)]
            + ([bone_edge_points(s, rng, n_far, jitter=HARD_FAR_JITTER)] if n_far else [])
        )
        for s in batch
    ]
    with torch.no_grad():
        _, logits = net.decoder(feat, mats, present, _norm_points(cand, rots), ctx)
        lab = torch.from_numpy(np.stack([s.labels.reshape(-1)[c] for s, c in zip(batch, cand, strict=True)]))
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), lab.reshape(-1).long(), reduction="none")
        worst = torch.topk(ce.view(len(batch), -1), n, dim=1).indices.numpy()
    return [c[w] for c, w in zip(cand, worst, strict=True)]


def _projection_loss(
    net: ReconNet,
    feat: torch.Tensor,
    mats: torch.Tensor,
    present: torch.Tensor,
    rng: np.random.Generator,
    cfg: TrainConfig,
    ctx: torch.Tensor | None = None,
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
    hu_p, _ = net.decoder(feat, mats, present, pts, ctx)
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
    net = ReconNet(
        hidden=cfg.hidden,
        learned=cfg.learned,
        context=cfg.context,
        context_grid=cfg.context_grid,
        fine_film=cfg.fine_film,
    )
    init_steps = 0
    dec_lr = 1.0
    if cfg.init_from is not None:
        ck = torch.load(cfg.init_from, map_location="cpu", weights_only=False)
        old = load_net(ck["net"], ck.get("config", {}))
        widen_first_layer(old.decoder, net.decoder)
        if old.encoder.cnn is not None and net.encoder.cnn is not None:
            load_film_cnn(old.encoder.cnn, net.encoder.cnn)
        if old.context is not None and net.context is not None:
            net.context.load_state_dict(old.context.state_dict())
        init_steps = int(ck.get("steps", 0))
        dec_lr = 0.5  # the warm decoder moves more gently than the new encoder
        log.info("warm start from %s (%d steps)", cfg.init_from, init_steps)
    disc = PatchDiscriminator()
    feats = encode_all(net, samples)
    cls_w = class_weights(samples) if cfg.class_weights else None
    if cls_w is not None:
        log.info("class weights %s", [round(float(x), 2) for x in cls_w])
    groups = [{"params": list(net.decoder.parameters()), "scale": dec_lr}]
    if net.encoder.cnn is not None:
        groups.append({"params": list(net.encoder.cnn.parameters()), "scale": 1.0})
    if net.context is not None:
        groups.append({"params": list(net.context.parameters()), "scale": 1.0})
    opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=1e-4)
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
            g["lr"] = lr * g["scale"]
        adv_w = 0.0 if frac < cfg.adv_start else cfg.w_adv * min(1.0, (frac - cfg.adv_start) / 0.2)
        if cfg.rescan_steps and step % cfg.rescan_steps == 0 and step > 0:
            # Samples still being generated join the pool as they appear (data generation runs alongside).
            have = frozenset((s.seed, s.pose) for s in samples)
            new = load_samples(cfg.data, TRAIN_SEEDS, None, skip=have)
            if cfg.max_samples is None and new:
                samples.extend(new)
                feats.extend(encode_all(net, new))
        ids = [int(i) for i in rng.integers(0, len(samples), cfg.batch)]
        loss, parts = train_step(net, disc, opt_d, ids, feats, samples, rng, cfg, adv_w, cls_w)
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
    torch.save(
        {"net": net.state_dict(), "config": _cfg_json(cfg), "steps": step, "init_steps": init_steps}, ckpt
    )
    plot = cfg.out / "loss_curve.png"
    _plot(history, plot)
    final = {k: float(np.mean(v[-50:])) for k, v in history.items()}
    report = cfg.out / "train_report.json"
    seeds = tuple(sorted({s.seed for s in samples}))
    doc: dict[str, Any] = {
        "model_version": MODEL_VERSION,
        "config": _cfg_json(cfg),
        "steps": step,
        "warm_start_steps": init_steps,
        "class_weights": None if cls_w is None else [float(x) for x in cls_w],
        "seconds": round(seconds, 1),
        "samples": len(samples),
        "sample_files": [f"recon_{s.seed}_{s.pose}.npz" for s in samples],
        "anatomies": len(seeds),
        "seed_range": [min(seeds), max(seeds)],
        "final_losses": final,
        "onnx": [],
        "parity_max_abs_diff": {},
        "history_every_25": {k: v[::25] for k, v in history.items()},
    }
    # The report is written before the export, so a failed export loses neither the weights nor the record
    # (the checkpoint can be exported again with export.recon.onnx_io.export_checkpoint).
    report.write_text(json.dumps(doc, indent=2))
    onnx_paths: tuple[Path, ...] = ()
    parity: dict[str, float] = {}
    if cfg.export:
        from export.recon.onnx_io import export_recon

        onnx_paths, parity = export_recon(net, cfg.models_dir or cfg.out, cfg.seed, _cfg_json(cfg))
        doc["onnx"] = [str(p) for p in onnx_paths]
        doc["parity_max_abs_diff"] = parity
        report.write_text(json.dumps(doc, indent=2))
        if cfg.calib_data is not None:
            from export.recon.calibrate import calibrate

            cal = calibrate(cfg.models_dir or cfg.out, cfg.calib_data, train_seeds=seeds)
            doc["label_calibration"] = asdict(cal)
            report.write_text(json.dumps(doc, indent=2))
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
