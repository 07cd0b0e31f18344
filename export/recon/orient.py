"""The orientation model: the knee's axial rotation relative to the AP film, from the two film frames.

A knee-canonical reconstruction (appliance/recon/orientation.py) turns its cube to the knee's rotation
before decoding, so the rotation has to come from the films. The cues are global and subtle (how far the
fibular head hides behind the tibia and where the patella sits on the AP; how well the two posterior
condyles superimpose on the lateral), which a point decoder reading each film around one ray did not
pick up (docs/recon.md), but a small 2D CNN that sees both whole frames does.

Target: the truth labels' plateau angle in the cube (:func:`plateau_axial_deg`) minus the AP film's own
turn (:func:`ap_yaw_deg`); the runtime adds the turn back. Trained on the reconstruction training samples
(seeds 20000-20399), it never sees the calibration (21000-21023) or evaluation (5xxxxx) anatomies.

ONNX: input ``films`` (B, 2, FILM_PX, FILM_PX) float32 (AP, lateral frames as the encoder gets them),
output ``angle_deg`` (B,).
"""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import Tensor, nn

from appliance.errors import InputError
from appliance.recon.infer import FILM_PX, ORIENT_MODEL
from appliance.recon.orientation import ap_yaw_deg, plateau_axial_deg
from export.recon.data import TRAIN_SEEDS
from export.recon.dataset import sample_seed

log = logging.getLogger(__name__)

ORIENT_VERSION = "orient-1.0"
ANGLE_SCALE = 20.0  # network output unit (deg)


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, 2, 1, bias=False),
        nn.GroupNorm(8, c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False),
        nn.GroupNorm(8, c_out),
        nn.ReLU(inplace=True),
    )


class OrientNet(nn.Module):
    """Both frames at half resolution through five strided blocks; a 4x4 pooled layout (where things sit
    matters, not only what) and a small head give the angle in degrees."""

    def __init__(self, width: int = 16, mean_deg: float = 0.0) -> None:
        super().__init__()
        ch = [2, width, 2 * width, 4 * width, 4 * width, 8 * width]
        self.features = nn.Sequential(*[_block(ch[i], ch[i + 1]) for i in range(5)])
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.head = nn.Sequential(
            nn.Linear(8 * width * 16, 64), nn.ReLU(inplace=True), nn.Dropout(0.2), nn.Linear(64, 1)
        )
        self.register_buffer("mean_deg", torch.tensor(float(mean_deg)))

    def forward(self, films: Tensor) -> Tensor:
        x = F.avg_pool2d(films, 2)
        z = self.pool(self.features(x)).flatten(1)
        return self.head(z)[:, 0] * ANGLE_SCALE + self.mean_deg


@dataclass(frozen=True)
class OrientData:
    films: NDArray[np.float16]  # (N, 2, FILM_PX, FILM_PX)
    target_deg: NDArray[np.float32]  # (N,) rotation relative to the AP film
    names: tuple[str, ...]
    seeds: tuple[int, ...]


def film_angle_deg(labels: NDArray[np.uint8], mats: NDArray[np.float32]) -> float:
    """The training target of one sample: the plateau's angle in the cube minus the AP film's turn."""
    return plateau_axial_deg(labels) - ap_yaw_deg(mats[0])


def load_orient_data(folder: Path, seed_range: tuple[int, int] | None = None) -> OrientData:
    """Films and targets of every ``recon_<seed>_<pose>.npz`` in ``folder`` (seeds outside ``seed_range``
    refused)."""
    paths = sorted(Path(folder).glob("recon_*_*.npz"), key=sample_seed)
    if not paths:
        raise InputError(f"no recon_<seed>_<pose>.npz samples in {folder}", reason="no_data")
    films = np.zeros((len(paths), 2, FILM_PX, FILM_PX), np.float16)
    target = np.zeros(len(paths), np.float32)
    seeds = []
    for i, p in enumerate(paths):
        seed, _ = sample_seed(p)
        if seed_range is not None and not seed_range[0] <= seed <= seed_range[1]:
            raise InputError(f"{p.name}: seed {seed} outside {seed_range}", reason="seed_range")
        with np.load(p) as d:
            films[i] = d["films"]
            target[i] = film_angle_deg(d["labels"], d["mats"])
        seeds.append(seed)
    log.info("orientation data: %d samples from %s", len(paths), folder)
    return OrientData(films, target, tuple(p.name for p in paths), tuple(seeds))


P_DROP_LAT = 0.25  # share of samples seen without the lateral film (AP-only studies), as in recon training


def augment(x: Tensor, rng: np.random.Generator) -> Tensor:
    """Exposure and processing (gamma, gain, offset, noise) and a shift of each frame by up to 1/32 of it:
    the cube centre is estimated, so the knee is never exactly where training put it. A quarter of the
    samples lose the lateral frame (zeros, as the runtime passes an absent view)."""
    b = x.shape[0]
    g = torch.from_numpy(np.exp(rng.normal(0.0, 0.15, (b, 1, 1, 1))).astype(np.float32))
    x = x.clamp(0.0, 1.0) ** g
    gain = torch.from_numpy(rng.normal(1.0, 0.1, (b, 1, 1, 1)).astype(np.float32))
    off = torch.from_numpy(rng.normal(0.0, 0.05, (b, 1, 1, 1)).astype(np.float32))
    x = x * gain + off
    x = x + torch.from_numpy(rng.normal(0.0, 0.02, x.shape).astype(np.float32))
    m = max(1, x.shape[-1] // 32)
    out = torch.empty_like(x)
    for i in range(b):
        for k in range(x.shape[1]):
            dy, dx = (int(v) for v in rng.integers(-m, m + 1, 2))
            out[i, k] = torch.roll(x[i, k], (dy, dx), (0, 1))
    drop = torch.from_numpy(rng.random(b) < P_DROP_LAT)
    out[drop, 1] = 0.0
    return out


@dataclass(frozen=True)
class OrientConfig:
    data: Path
    out: Path
    seed: int
    epochs: int = 40
    batch: int = 16
    lr: float = 1e-3
    width: int = 16
    threads: int = 1


def predict(net: OrientNet, films: NDArray[np.float16], batch: int = 32) -> NDArray[np.float32]:
    net.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(films), batch):
            out.append(net(torch.from_numpy(films[i : i + batch].astype(np.float32))).numpy())
    return np.concatenate(out).astype(np.float32)


def angle_errors(pred: NDArray[np.float32], target: NDArray[np.float32]) -> dict[str, float]:
    err = (pred - target + 90.0) % 180.0 - 90.0
    base = (target - float(np.mean(target)) + 90.0) % 180.0 - 90.0
    return {
        "n": len(target),
        "mae_deg": float(np.mean(np.abs(err))),
        "p90_abs_deg": float(np.percentile(np.abs(err), 90)),
        "max_abs_deg": float(np.max(np.abs(err))),
        "constant_guess_mae_deg": float(np.mean(np.abs(base))),
    }


def train_orient(cfg: OrientConfig) -> tuple[OrientNet, dict[str, Any]]:
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    data = load_orient_data(cfg.data, TRAIN_SEEDS)
    mean = float(np.mean(data.target_deg))
    net = OrientNet(cfg.width, mean)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
    n = len(data.names)
    steps = cfg.epochs * math.ceil(n / cfg.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, total_steps=steps, pct_start=0.1, anneal_strategy="cos"
    )
    x_all = torch.from_numpy(data.films.astype(np.float32))
    y_all = torch.from_numpy(data.target_deg)
    history = []
    t0 = time.perf_counter()
    net.train()
    for ep in range(cfg.epochs):
        perm = torch.from_numpy(rng.permutation(n))
        total = 0.0
        for i in range(0, n, cfg.batch):
            b = perm[i : i + cfg.batch]
            pred = net(augment(x_all[b], rng))
            loss = F.smooth_l1_loss((pred - mean) / ANGLE_SCALE, (y_all[b] - mean) / ANGLE_SCALE, beta=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(b)
        history.append(total / n)
        log.info("orientation epoch %d  loss %.4f  %.0f s", ep, total / n, time.perf_counter() - t0)
    seconds = time.perf_counter() - t0
    report: dict[str, Any] = {
        "model_version": ORIENT_VERSION,
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
        "seconds": round(seconds, 1),
        "samples": n,
        "seed_range": [min(data.seeds), max(data.seeds)],
        "train_seeds": sorted(set(data.seeds)),
        "mean_deg": mean,
        "loss_per_epoch": history,
        "train_fit": angle_errors(predict(net, data.films), data.target_deg),
    }
    return net, report


def evaluate_orient(net: OrientNet, folder: Path, train_seeds: set[int]) -> dict[str, Any]:
    """Angle errors on held-out samples (refused if any seed was trained on)."""
    data = load_orient_data(folder)
    overlap = sorted(set(data.seeds) & train_seeds)
    if overlap:
        raise InputError(f"{folder} holds training seeds {overlap[:5]}", reason="seed_overlap")
    pred = predict(net, data.films)
    ap_films = data.films.copy()
    ap_films[:, 1] = 0
    return {
        "data": str(folder),
        "seeds": [min(data.seeds), max(data.seeds)],
        **angle_errors(pred, data.target_deg),
        "ap_only": angle_errors(predict(net, ap_films), data.target_deg),
        "per_item": {
            n: [round(float(p), 2), round(float(t), 2)]
            for n, p, t in zip(data.names, pred, data.target_deg, strict=True)
        },
    }


def export_orient(net: OrientNet, models_dir: Path, seed: int) -> tuple[Path, float]:
    """``recon_orient.onnx`` with metadata, checked against PyTorch (returns the path and max abs diff)."""
    from export.onnx_export import ort_parity

    models_dir.mkdir(parents=True, exist_ok=True)
    path = models_dir / ORIENT_MODEL
    example = torch.rand(1, 2, FILM_PX, FILM_PX)
    net.eval()
    with warnings.catch_warnings():
        # GroupNorm's batch-size check traces as a constant; the graph takes any batch (parity below).
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        _export(net, example, path, seed)
    par = ort_parity(net, (torch.rand(2, 2, FILM_PX, FILM_PX),), path, tolerance=1e-2)
    return path, float(par.worst)


def orient_meta(seed: int) -> dict[str, Any]:
    """The ONNX metadata of ``recon_orient.onnx``."""
    return {
        "version": ORIENT_VERSION,
        "training_seed": int(seed),
        "input_geometry": {"film_px": FILM_PX, "views": ["knee_ap", "knee_lat"]},
        "output": "knee axial rotation relative to the AP film, deg",
    }


def _export(net: OrientNet, example: Tensor, path: Path, seed: int) -> None:
    from export.onnx_export import export_onnx

    export_onnx(
        net,
        (example,),
        path,
        input_names=["films"],
        output_names=["angle_deg"],
        metadata=orient_meta(seed),
    )


def load_orient(checkpoint: Path) -> tuple[OrientNet, int]:
    """An orientation checkpoint written by ``xr3d train recon-orient`` -> (network in eval mode, seed)."""
    ck = torch.load(checkpoint, map_location="cpu", weights_only=False)
    net = OrientNet(int(ck.get("width", 16)))
    net.load_state_dict(ck["net"])
    net.eval()
    seed = int(ck.get("report", {}).get("config", {}).get("seed", 0))
    return net, seed


def save_report(report: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(report, indent=2))
