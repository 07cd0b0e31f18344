"""Training of the knee landmark model (``xr3d train knee-landmarks``).

Data: the complete ``case_<seed>`` folders of a training set (train-range seeds only,
``build_index(root, "train")``), simulated with ``--views knee-ap,knee-lat``. Every knee film is read
once into a :class:`export.datasets.knee_samples.KneeFrame` (0.5 mm/px at the detector, left knees
mirrored to right ones, 40 mm black margin). A training sample is a 480 x 384 window of a random frame,
centred within ``jitter_mm`` of the film centre, through a freshly sampled recorded augmentation chain
(:func:`export.datasets.augment.sample_augmentation`, the crop-stage preset without flips: the models
are side-canonical) and its Gaussian targets on the film's view channels (the other view's channels and
hidden landmarks carry no weight).

Loss: the spatial cross-entropy of ``export.training.landmarks.heatmap_loss``. AdamW, 50-step warm-up,
cosine. Determinism: every random draw comes from ``seed``; with ``steps`` fixed the run is repeatable on
the same torch build and thread count; with a wall-clock budget (``minutes``) the step total is planned
after 10 steps and re-planned every 25 from the measured speed (recorded in the report).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch
from numpy.typing import NDArray
from tqdm import tqdm

from appliance.errors import InputError
from appliance.landmarks.knee_views import AXIS_POINT_MM, KNEE_LANDMARKS, KNEE_VIEWS
from export.datasets.augment import apply, crop_stage_config, sample_augmentation
from export.datasets.heatmaps import encode_heatmaps
from export.datasets.knee_samples import KneeFrame, knee_frame, load_knee_case
from export.datasets.landmark_samples import build_index
from export.models.knee_landmark_net import CHANNELS, KNEE_GEOMETRY, KneeLandmarkNet, view_channels
from export.training.landmarks import heatmap_loss

log = logging.getLogger(__name__)

__all__ = [
    "KNEE_ONNX",
    "KNEE_PT",
    "MODEL_VERSION",
    "KneeTrainConfig",
    "KneeTrainResult",
    "build_shipped",
    "load_knee_model",
    "prepare_frames",
    "train_knee_landmarks",
    "window",
]

MODEL_VERSION: Final = "0.1.0"
KNEE_ONNX: Final = "knee_landmarks.onnx"
KNEE_PT: Final = "knee_landmarks.pt"
F32 = NDArray[np.float32]


@dataclass(frozen=True)
class KneeTrainConfig:
    """Everything that defines a training run (stored in ``train_report.json``)."""

    data: Path
    out: Path
    seed: int
    minutes: float = 40.0
    steps: int | None = None  # None: fit the wall-clock budget
    batch: int = 4
    lr: float = 2e-3
    weight_decay: float = 1e-4
    jitter_mm: float = 20.0
    threads: int = 1
    models_dir: Path | None = None  # where the ONNX / .pt go; None: ``out``
    max_cases: int | None = None
    init_from: Path | None = None  # start from ``init_from/knee_landmarks.pt``

    def to_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class KneeTrainResult:
    report: Path
    loss_plot: Path
    onnx: Path
    pt: Path
    steps: int
    final_loss: float
    parity_max_abs_diff: float
    train_seeds: tuple[int, ...]


# --- data -------------------------------------------------------------------------------------------
def prepare_frames(root: Path, *, max_cases: int | None = None, split: str = "train") -> list[KneeFrame]:
    """Every knee film of the ``split`` cases under ``root`` as model-resolution frames."""
    index = build_index(root, split)
    seeds = index.seeds[:max_cases] if max_cases else index.seeds
    frames: list[KneeFrame] = []
    for seed in tqdm(seeds, desc="reading cases", unit="case", leave=False):
        truth = json.loads((index.folder(seed) / "truth.json").read_text())
        for view in KNEE_VIEWS:
            if view not in truth.get("films", {}):
                continue
            case = load_knee_case(index.folder(seed), view)
            frames.append(knee_frame(case, KNEE_GEOMETRY.mm_per_px))
    if not frames:
        raise InputError(
            f"no knee films under {root} (simulate with --views knee-ap,knee-lat)", reason="no_cases"
        )
    log.info("prepared %d knee films from %d cases", len(frames), len(seeds))
    return frames


def window(
    frame: KneeFrame, centre: tuple[float, float], shape: tuple[int, int]
) -> tuple[F32, NDArray[np.float64]]:
    """The ``shape`` window of ``frame`` whose centre pixel is the integer pixel nearest ``centre``
    (col, row), zero outside; and the frame landmarks in window pixels."""
    rows, cols = shape
    c0 = round(centre[0] - (cols - 1) / 2.0)
    r0 = round(centre[1] - (rows - 1) / 2.0)
    out = np.zeros(shape, np.float32)
    h, w = frame.image.shape
    rs, re_ = max(0, r0), min(h, r0 + rows)
    cs, ce = max(0, c0), min(w, c0 + cols)
    if re_ > rs and ce > cs:
        out[rs - r0 : re_ - r0, cs - c0 : ce - c0] = frame.image[rs:re_, cs:ce]
    return out, frame.landmarks - np.array([c0, r0], dtype=np.float64)


@dataclass(frozen=True, eq=False)
class Batch:
    images: torch.Tensor  # (B, 1, H, W)
    heatmaps: torch.Tensor  # (B, C, h, w)
    weights: torch.Tensor  # (B, C)


def make_batch(rng: np.random.Generator, frames: Sequence[KneeFrame], n: int, jitter_mm: float) -> Batch:
    """``n`` augmented windows with their targets on their view's channels."""
    g = KNEE_GEOMETRY
    cfg = dataclasses.replace(crop_stage_config(), p_flip=0.0)
    hm_shape = g.heatmap_shape
    imgs, hms, wts = [], [], []
    for _ in range(n):
        f = frames[int(rng.integers(len(frames)))]
        jit = jitter_mm / f.mm_per_px
        centre = (
            (f.image.shape[1] - 1) / 2.0 + float(rng.uniform(-jit, jit)),
            (f.image.shape[0] - 1) / 2.0 + float(rng.uniform(-jit, jit)),
        )
        img, lm = window(f, centre, g.shape)
        rec = sample_augmentation(rng, g.shape, lm, pixel_mm=g.mm_per_px, config=cfg, out_shape=g.shape)
        aug = apply(img, lm, rec, f.visible)
        t = encode_heatmaps(aug.landmarks, aug.visible, g.shape, stride=g.stride, sigma=g.sigma)
        full = np.zeros((len(CHANNELS), *hm_shape), np.float32)
        w = np.zeros(len(CHANNELS), np.float32)
        idx = list(view_channels(f.view))
        full[idx] = t.heatmaps
        w[idx] = t.mask.astype(np.float32)
        imgs.append(aug.image)
        hms.append(full)
        wts.append(w)
    return Batch(
        images=torch.from_numpy(np.stack(imgs)[:, None]),
        heatmaps=torch.from_numpy(np.stack(hms)),
        weights=torch.from_numpy(np.stack(wts)),
    )


# --- loop -------------------------------------------------------------------------------------------
def _lr(step: int, total: int, lr: float) -> float:
    warm = 50
    if step < warm:
        return lr * (step + 1) / warm
    t = (step - warm) / max(1, total - warm)
    return lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


def _plot(losses: Sequence[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    v = np.asarray(losses)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(v, lw=0.5, alpha=0.4, label="step")
    k = max(1, len(v) // 50)
    if len(v) >= k:
        ax.plot(
            np.arange(k - 1, len(v)),
            np.convolve(v, np.ones(k) / k, mode="valid"),
            lw=1.5,
            label=f"mean of {k}",
        )
    ax.set_yscale("log")
    ax.set_title("knee landmarks (0.5 mm/px, both views)")
    ax.set_xlabel("step")
    ax.set_ylabel("spatial cross-entropy")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _metadata(cfg: KneeTrainConfig, steps: int, seeds: Sequence[int]) -> dict[str, Any]:
    return {
        "version": MODEL_VERSION,
        "training_seed": int(cfg.seed),
        "input_geometry": KNEE_GEOMETRY.to_dict(),
        "channels": list(CHANNELS),
        "views": {v: list(KNEE_LANDMARKS[v]) for v in KNEE_VIEWS},
        "canonical_side": "R",
        "axis_point_mm": AXIS_POINT_MM,
        "steps": int(steps),
        "train_cases": len(seeds),
        "train_seed_range": [int(min(seeds)), int(max(seeds))] if seeds else [],
    }


def load_knee_model(models_dir: Path) -> tuple[KneeLandmarkNet, dict[str, Any]]:
    """The network from ``models_dir/knee_landmarks.pt`` (eval mode) and its metadata."""
    p = Path(models_dir) / KNEE_PT
    if not p.is_file():
        raise InputError(
            f"knee landmark weights missing: {p}; run `xr3d train knee-landmarks`", reason="model_missing"
        )
    blob = torch.load(p, map_location="cpu", weights_only=True)
    net = KneeLandmarkNet()
    net.load_state_dict(blob["state"])
    net.eval()
    return net, json.loads(blob["metadata"])


def export_knee_model(
    net: KneeLandmarkNet, path: Path, metadata: dict[str, Any], example: torch.Tensor
) -> float:
    """ONNX (opset 17, dynamic batch, metadata) and the largest |ORT - PyTorch| on ``example``."""
    from export.onnx_export import export_onnx, ort_parity

    net.eval()
    r = export_onnx(
        net,
        (example,),
        path,
        input_names=("film",),
        output_names=("heatmaps",),
        metadata=metadata,
        name="knee_landmarks",
    )
    if not r.opcheck.ok:
        log.warning("%s", r.opcheck.summary())
    par = ort_parity(net, (example,), r.path)
    log.info("ORT parity knee_landmarks: max |diff| %.2e", par.worst)
    if not par.ok:
        raise InputError(f"ONNX Runtime differs from PyTorch: {par.max_abs_diff}", reason="onnx_parity")
    return float(par.worst)


def train_knee_landmarks(cfg: KneeTrainConfig) -> KneeTrainResult:
    """Read the data, train, plot, export to ONNX, check parity, write the report."""
    t_start = time.perf_counter()
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng_data, rng_train = (np.random.default_rng(s) for s in np.random.SeedSequence(cfg.seed).spawn(2))
    del rng_data  # reserved: keeps the training stream stable if data-side draws are added
    cfg.out.mkdir(parents=True, exist_ok=True)
    models_dir = cfg.models_dir or cfg.out
    models_dir.mkdir(parents=True, exist_ok=True)
    frames = prepare_frames(cfg.data, max_cases=cfg.max_cases)
    seeds = tuple(sorted({f.seed for f in frames}))
    if cfg.init_from is not None:
        net, _ = load_knee_model(cfg.init_from)
        log.info("initialised from %s", cfg.init_from)
    else:
        net = KneeLandmarkNet()
    budget = max(30.0, cfg.minutes * 60.0 - (time.perf_counter() - t_start) - 60.0)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    net.train()
    losses: list[float] = []
    total = cfg.steps
    t0 = t_warm = time.perf_counter()
    bar = tqdm(desc="train knee-landmarks", unit="step", total=total, dynamic_ncols=True)
    step = 0
    while total is None or step < total:
        lr = _lr(step, total if total is not None else 10_000, cfg.lr)
        for grp in opt.param_groups:
            grp["lr"] = lr
        b = make_batch(rng_train, frames, cfg.batch, cfg.jitter_mm)
        loss = heatmap_loss(net.logits(b.images), b.heatmaps, b.weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}", lr=f"{lr:.2e}")
        if step == 2:
            t_warm = time.perf_counter()
        if step % 50 == 0:
            log.info(
                "step %d/%s loss %.4f lr %.2e %.0f s",
                step,
                total,
                np.mean(losses[-50:]),
                lr,
                time.perf_counter() - t0,
            )
        if cfg.steps is None and (step == 10 or (step > 10 and step % 25 == 0)):
            now = time.perf_counter()
            per = (now - t_warm) / (step - 2)
            total = max(step + 1, step + int((budget - (now - t0)) / per))
            bar.total = total
            bar.refresh()
    bar.close()
    log.info("trained %d steps in %.0f s, last loss %.4f", step, time.perf_counter() - t0, losses[-1])

    plot = cfg.out / "loss_curve.png"
    _plot(losses, plot)
    meta = _metadata(cfg, step, seeds)
    net.eval()
    pt = models_dir / KNEE_PT
    torch.save({"state": net.state_dict(), "metadata": json.dumps(meta)}, pt)
    g = KNEE_GEOMETRY
    example = torch.from_numpy(
        window(frames[0], ((frames[0].image.shape[1] - 1) / 2, (frames[0].image.shape[0] - 1) / 2), g.shape)[
            0
        ][None, None].copy()
    )
    onnx_path = models_dir / KNEE_ONNX
    worst = export_knee_model(net, onnx_path, meta, example)
    final = float(np.mean(losses[-50:]))
    report = cfg.out / "train_report.json"
    report.write_text(
        json.dumps(
            {
                "config": cfg.to_dict(),
                "steps": step,
                "train_seeds": list(seeds),
                "train_films": len(frames),
                "final_loss": final,
                "parity_max_abs_diff": worst,
                "onnx": str(onnx_path),
                "minutes": (time.perf_counter() - t_start) / 60.0,
            },
            indent=2,
        )
    )
    log.info("knee training done in %.1f min", (time.perf_counter() - t_start) / 60.0)
    return KneeTrainResult(
        report=report,
        loss_plot=plot,
        onnx=onnx_path,
        pt=pt,
        steps=step,
        final_loss=final,
        parity_max_abs_diff=worst,
        train_seeds=seeds,
    )


def build_shipped(models_dir: Path | None = None) -> Any:
    """The shipped knee model as an :class:`export.reference_models.ReferenceModel` for
    ``xr3d export onnx --model knee_landmarks`` and ``xr3d bench --shipped``."""
    from export.reference_models import ReferenceModel

    d = models_dir or Path(__file__).resolve().parents[2] / "models"
    net, meta = load_knee_model(d)
    g = KNEE_GEOMETRY
    ex = torch.rand((1, 1, g.rows, g.cols), generator=torch.Generator().manual_seed(0))
    return ReferenceModel("knee_landmarks", net, (ex,), ("film",), ("heatmaps",), meta)
