"""Training of stage 3, the fine patch network (``xr3d train landmarks``, ``--stages fine`` alone).

Data: the complete ``case_<seed>`` folders of a training set (train-range seeds only, enforced by
:func:`export.datasets.landmark_samples.build_index`). Per case and per in-field landmark,
``patches_per_landmark`` patches (96 x 96 at 0.25 mm/px, :data:`FINE_GEOMETRY`) are cut around the
truth shifted by a uniform offset of up to ``jitter_mm`` per axis (detector mm): about the size of the
crop stage's errors (median ~1 mm, p95 ~2.5-3 mm), so the network learns to correct exactly those. The
patches are mirrored to the canonical side like the other stages. Every draw then gets a freshly
sampled, recorded augmentation chain (:func:`export.datasets.augment.crop_stage_config`: the same wide
8-bit / CLAHE / low-resolution / JPEG / inversion / seam set as the crop stage, no flips) and targets on
every visible landmark of the patch (the patch's own landmark always, neighbours when they fall inside).

Loss: spatial cross-entropy + ``coord_weight`` x soft-argmax distance in mm
(:mod:`export.training.landmarks_batches`), AdamW with the cosine schedule and wall-clock planning of
:func:`export.training.landmarks._run_stage`. The stage does not depend on stages 1-2 (its patches are
cut around the truth), so it can be trained alone and added to existing models.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn
from tqdm import tqdm

from appliance.errors import InputError
from appliance.landmarks.fine import CONTOUR_LANDMARKS, FINE_MODEL, MAX_FILM_MM_PER_PX, MAX_MOVE_MM
from appliance.landmarks.heatmaps import frame_affine
from export.datasets.augment import (
    apply,
    crop_stage_config,
    sample_augmentation,
    transform_points,
    visible_in,
)
from export.datasets.augment import warp_affine as _warp
from export.datasets.heatmaps import encode_heatmaps, to_output
from export.datasets.landmark_samples import CaseData, build_index, film_landmarks, mirrors
from export.models.landmark_fine_net import FINE_GEOMETRY, FineNet
from export.models.landmark_net import NetGeometry
from export.training.landmarks import _load_matching, _plot_losses, _run_stage
from export.training.landmarks_batches import Batch, coord_loss, heatmap_loss

log = logging.getLogger(__name__)

__all__ = [
    "FINE_PT",
    "FINE_VERSION",
    "FineConfig",
    "FineResult",
    "PatchSample",
    "build_shipped_fine",
    "case_film_landmarks",
    "cut_patches",
    "film_landmarks",
    "load_fine",
    "patch_batch",
    "prepare_patches",
    "train_fine",
]

FINE_VERSION: Final = "0.2.0"  # with landmarks 0.5.0 (film truth incl. the collimated field)
FINE_PT: Final = "landmarks_fine.pt"
F32 = NDArray[np.float32]
F64 = NDArray[np.float64]


@dataclass(frozen=True)
class FineConfig:
    """Everything that defines a stage-3 training run (stored in its report)."""

    data: Path
    out: Path
    seed: int
    minutes: float = 20.0
    steps: int | None = None  # None: fit the wall-clock budget
    batch: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-4
    patches_per_landmark: int = 16
    jitter_mm: float = 3.0
    width: int = 12
    coord_weight: float = 0.5
    models_dir: Path | None = None  # where the ONNX goes; None: ``out``
    max_cases: int | None = None
    threads: int = 2
    canonical_side: str | None = "R"
    init_from: Path | None = None  # a folder with landmarks_fine.pt
    # Targets where the film shows the landmarks (stitching registration error applied, see
    # film_landmarks); False: truth.json's landmarks_2d as the other stages use them.
    film_truth: bool = True
    # The runtime rules recorded in the metadata: landmarks the stage refines, weight of its point
    # against the crop stage's (1: its point); chosen on validation films, see docs/landmarks.md.
    refines: tuple[str, ...] = CONTOUR_LANDMARKS
    blend: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class FineResult:
    onnx: Path
    report: Path
    loss_plot: Path
    steps: int
    final_loss: float
    parity: tuple[tuple[str, float], ...]
    train_seeds: tuple[int, ...]
    minutes: float


@dataclass(frozen=True, eq=False)
class PatchSample:
    seed: int
    target: int  # index of the landmark the patch was cut around
    image: F32
    landmarks: F64  # (8, 2) patch (col, row)
    visible: NDArray[np.bool_]


# --- data -------------------------------------------------------------------------------------------
def case_film_landmarks(case: CaseData) -> F64:
    """The case's landmarks where its long-leg film shows them (``CaseData.film_points``: truth.json's
    ``landmarks_film`` when the simulator wrote it, else :func:`film_landmarks` of ``landmarks_2d``)."""
    return case.film_points if case.film_points is not None else case.landmarks


def cut_patches(
    case: CaseData,
    rng: np.random.Generator,
    *,
    per_landmark: int,
    jitter_mm: float,
    geometry: NetGeometry = FINE_GEOMETRY,
    canonical_side: str | None = None,
    film_truth: bool = True,
) -> list[PatchSample]:
    """``per_landmark`` jittered patches around every in-field landmark of ``case``; with ``film_truth``
    the targets are where the film shows the landmarks (:func:`film_landmarks`), else truth.json's."""
    s_row, s_col = case.film.spacing_mm
    truth_pts = case_film_landmarks(case) if film_truth else case.landmarks
    mirror = mirrors(case.side, canonical_side)
    shape = geometry.shape
    out: list[PatchSample] = []
    for k in range(len(case.names)):
        # draw the offsets even for a hidden landmark, so the sequence does not depend on the field
        offs = rng.uniform(-jitter_mm, jitter_mm, size=(per_landmark, 2))
        if not case.in_field[k]:
            continue
        for dc, dr in offs:
            centre = (float(truth_pts[k, 0] + dc / s_col), float(truth_pts[k, 1] + dr / s_row))
            a = frame_affine(
                geometry.mm_per_px / s_col, geometry.mm_per_px / s_row, centre, shape, mirror=mirror
            )
            fwd = np.linalg.inv(a)
            lm = transform_points(fwd, truth_pts)
            out.append(
                PatchSample(
                    seed=case.seed,
                    target=k,
                    image=_warp(case.film.image, fwd, shape, fill=0.0),
                    landmarks=lm,
                    visible=case.in_field & visible_in(lm, shape),
                )
            )
    return out


def prepare_patches(
    root: Path,
    rng: np.random.Generator,
    *,
    per_landmark: int,
    jitter_mm: float,
    max_cases: int | None = None,
    canonical_side: str | None = None,
    film_truth: bool = True,
) -> tuple[list[PatchSample], tuple[int, ...]]:
    """Read every training case of ``root`` and keep its patches (the full film is dropped)."""
    index = build_index(root, "train")
    seeds = index.seeds[:max_cases] if max_cases else index.seeds
    if not seeds:
        raise InputError(f"no complete cases under {root}", reason="no_cases")
    patches: list[PatchSample] = []
    for seed in tqdm(seeds, desc="cutting patches", unit="case", leave=False):
        patches += cut_patches(
            index.load(seed),
            rng,
            per_landmark=per_landmark,
            jitter_mm=jitter_mm,
            canonical_side=canonical_side,
            film_truth=film_truth,
        )
    log.info("prepared %d patches from %d cases", len(patches), len(seeds))
    return patches, tuple(seeds)


def _augment_config() -> Any:
    # no flips (canonical side); fewer markers: at 0.25 mm/px a lead marker covers the whole patch
    return dataclasses.replace(crop_stage_config(), p_flip=0.0, p_marker=0.1)


def patch_batch(
    rng: np.random.Generator, patches: Sequence[PatchSample], n: int, geometry: NetGeometry = FINE_GEOMETRY
) -> Batch:
    """``n`` augmented patches with ``geometry``'s targets on every visible landmark."""
    g = geometry
    cfg = _augment_config()
    imgs, hms, wts, pts = [], [], [], []
    for _ in range(n):
        s = patches[int(rng.integers(len(patches)))]
        rec = sample_augmentation(
            rng, g.shape, s.landmarks, pixel_mm=g.mm_per_px, config=cfg, out_shape=g.shape
        )
        aug = apply(s.image, s.landmarks, rec, s.visible)
        t = encode_heatmaps(aug.landmarks, aug.visible, g.shape, stride=g.stride, sigma=g.sigma)
        q = to_output(aug.landmarks, g.stride)
        q[~t.mask] = 0.0
        imgs.append(aug.image)
        hms.append(t.heatmaps)
        wts.append(t.mask.astype(np.float32))
        pts.append(np.asarray(np.nan_to_num(q), np.float32))
    return Batch(
        images=torch.from_numpy(np.stack(imgs)[:, None]),
        heatmaps=torch.from_numpy(np.stack(hms)),
        weights=torch.from_numpy(np.stack(wts)),
        points=torch.from_numpy(np.stack(pts)),
        masks=None,
        mask_weights=None,
    )


# --- weights ----------------------------------------------------------------------------------------
def load_fine(models_dir: Path) -> tuple[FineNet, dict[str, Any]]:
    """The fine network from ``models_dir/landmarks_fine.pt`` (eval mode) and its metadata."""
    p = Path(models_dir) / FINE_PT
    if not p.is_file():
        raise InputError(
            f"fine landmark weights missing: {p}; run `xr3d train landmarks`", reason="model_missing"
        )
    s = torch.load(p, map_location="cpu", weights_only=True)
    meta = json.loads(s["metadata"])
    net = FineNet(**meta.get("arch", {}))
    net.load_state_dict(s["state"])
    net.eval()
    return net, meta


def _metadata(cfg: FineConfig, net: FineNet, steps: int, seeds: Sequence[int]) -> dict[str, Any]:
    from appliance.analytics.landmarks import LANDMARKS_2D

    return {
        "arch": net.arch(),
        "version": FINE_VERSION,
        "training_seed": int(cfg.seed),
        "input_geometry": net.geometry.to_dict(),
        "stage": "fine",
        "landmarks": list(LANDMARKS_2D),
        "steps": int(steps),
        "train_cases": len(seeds),
        "train_seed_range": [int(min(seeds)), int(max(seeds))],
        "jitter_mm": cfg.jitter_mm,
        "film_truth": cfg.film_truth,
        # the runtime's rules, recorded with the weights they were chosen for
        "max_film_mm_per_px": MAX_FILM_MM_PER_PX,
        "max_move_mm": MAX_MOVE_MM,
        "refines": list(cfg.refines),
        "blend": cfg.blend,
        **({"canonical_side": cfg.canonical_side} if cfg.canonical_side else {}),
    }


def _export(
    net: FineNet, path: Path, meta: dict[str, Any], example: torch.Tensor
) -> tuple[tuple[str, float], ...]:
    from export.onnx_export import export_onnx, ort_parity

    net.eval()
    r = export_onnx(
        net,
        (example,),
        path,
        input_names=("patch",),
        output_names=("heatmaps",),
        metadata=meta,
        name="landmarks_fine",
    )
    if not r.opcheck.ok:
        log.warning("%s", r.opcheck.summary())
    p = ort_parity(net, (example,), r.path)
    parity = tuple((f"fine.{n}", d) for n, d in p.max_abs_diff)
    for n, d in parity:
        log.info("ORT parity %s: max |diff| %.2e", n, d)
    if not p.ok:
        raise InputError(f"ONNX Runtime differs from PyTorch: {parity}", reason="onnx_parity")
    return parity


# --- training ---------------------------------------------------------------------------------------
def train_fine(cfg: FineConfig) -> FineResult:
    """Cut the patches, train, plot, save ``landmarks_fine.{pt,onnx}``, check ORT parity."""
    t_start = time.perf_counter()
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng_data, rng_train = (np.random.default_rng(s) for s in np.random.SeedSequence([cfg.seed, 3]).spawn(2))
    cfg.out.mkdir(parents=True, exist_ok=True)
    models_dir = cfg.models_dir or cfg.out
    models_dir.mkdir(parents=True, exist_ok=True)
    patches, seeds = prepare_patches(
        cfg.data,
        rng_data,
        per_landmark=cfg.patches_per_landmark,
        jitter_mm=cfg.jitter_mm,
        max_cases=cfg.max_cases,
        canonical_side=cfg.canonical_side,
        film_truth=cfg.film_truth,
    )
    prep_s = time.perf_counter() - t_start
    budget = max(30.0, cfg.minutes * 60.0 - prep_s - 30.0)

    net = FineNet(cfg.width)
    if cfg.init_from is not None:
        src, _ = load_fine(cfg.init_from)
        n, fresh = _load_matching(net, src)
        log.info("fine: %d tensors from %s, fresh: %s", n, cfg.init_from, ", ".join(fresh) or "none")
    g = net.geometry
    cell_mm = g.mm_per_px * g.stride

    def step(m: nn.Module, rng: np.random.Generator) -> torch.Tensor:
        b = patch_batch(rng, patches, cfg.batch, g)
        out: torch.Tensor = m.logits(b.images)  # type: ignore[operator]
        loss = heatmap_loss(out, b.heatmaps, b.weights)
        if cfg.coord_weight > 0:
            loss = loss + cfg.coord_weight * coord_loss(out, b.points, b.weights, cell_mm)
        return loss

    # _run_stage reads lr / weight decay from a TrainConfig-like object
    n_steps, losses = _run_stage("stage3-fine", net, step, rng_train, cfg, steps=cfg.steps, budget_s=budget)  # type: ignore[arg-type]
    plot = cfg.out / "loss_curve_fine.png"
    _plot_losses({"stage 3 (patches, 0.25 mm/px)": losses}, plot)
    net.eval()
    meta = _metadata(cfg, net, n_steps, seeds)
    torch.save({"state": net.state_dict(), "metadata": json.dumps(meta)}, models_dir / FINE_PT)
    example = torch.from_numpy(patches[0].image[None, None].copy())
    onnx_path = models_dir / FINE_MODEL
    parity = _export(net, onnx_path, meta, example)
    final = float(np.mean(losses[-50:]))
    minutes = (time.perf_counter() - t_start) / 60.0
    report = cfg.out / "train_report_fine.json"
    report.write_text(
        json.dumps(
            {
                "config": cfg.to_dict(),
                "steps": n_steps,
                "train_seeds": list(seeds),
                "patches": len(patches),
                "final_loss": final,
                "parity_max_abs_diff": dict(parity),
                "onnx": str(onnx_path),
                "prepare_seconds": prep_s,
                "minutes": minutes,
            },
            indent=2,
        )
    )
    log.info("fine stage done in %.1f min", minutes)
    return FineResult(
        onnx=onnx_path,
        report=report,
        loss_plot=plot,
        steps=n_steps,
        final_loss=final,
        parity=parity,
        train_seeds=seeds,
        minutes=minutes,
    )


def build_shipped_fine(models_dir: Path | None = None) -> Any:
    """The trained fine stage as an :class:`export.reference_models.ReferenceModel` for
    ``xr3d export onnx --model landmarks_fine`` (weights from ``models/landmarks_fine.pt``)."""
    from export.reference_models import ReferenceModel

    d = models_dir or Path(__file__).resolve().parents[2] / "models"
    net, meta = load_fine(d)
    g = net.geometry
    ex = torch.rand((1, 1, g.rows, g.cols), generator=torch.Generator().manual_seed(0))
    return ReferenceModel("landmarks_fine", net, (ex,), ("patch",), ("heatmaps",), meta)
