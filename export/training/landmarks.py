"""Training of the two-stage landmark model (``xr3d train landmarks``).

Data: the complete ``case_<seed>`` folders of a training set (seeds in the train range, enforced by
:func:`export.datasets.landmark_samples.build_index`). Each case is read once: its whole-film sample at
2 mm/px (with femur / tibia masks projected from ``labels_leg.nii.gz`` when the case has it) and
``crops_per_region`` jittered 0.5 mm/px crops per region (hip, knee, ankle; 160 x 224) are kept in
memory, the full-resolution film is dropped. Batches and losses: :mod:`export.training.landmarks_batches`
(every draw gets a freshly sampled, recorded augmentation chain and its Gaussian heatmap targets).

Loss: spatial cross-entropy of the heatmap logits against the normalised Gaussian targets, plus (weight
``coord_weight``) the soft-argmax distance in mm, plus BCE + Dice on the femur / tibia masks where the
case has label volumes. AdamW with a cosine learning rate per stage.

Determinism: all randomness comes from ``seed`` (torch.manual_seed and numpy Generators): the same seed
and data give the same initial weights, the same sample and augmentation sequence, and with fixed
``steps=(n1, n2)`` the same run (on the same torch build and thread count). With a wall-clock budget the
step totals are planned from the measured speed and re-planned as the shared machine speeds up or slows
down, so the cosine schedule (and the totals, recorded in ``train_report.json`` and the ONNX metadata)
depend on the machine load; ``--steps n1 n2`` runs a pure cosine over the recorded totals.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn
from tqdm import tqdm

from appliance.errors import InputError
from export.datasets.landmark_samples import (
    REGIONS,
    CropSample,
    build_index,
    crop_sample,
    load_bone_labels,
    sample_crop_specs,
    whole_film_sample,
)
from export.models.landmark_net import CROP_GEOMETRY, WHOLE_GEOMETRY, CropNet, NetGeometry, WholeFilmNet
from export.training.landmarks_batches import (
    REGION_NAMES,
    PreparedCase,
    coord_loss,
    crop_batch,
    heatmap_loss,
    mask_loss,
    whole_batch,
)

log = logging.getLogger(__name__)

__all__ = [
    "CROP_ONNX",
    "MODEL_VERSION",
    "WHOLE_ONNX",
    "PreparedCase",
    "TrainConfig",
    "TrainResult",
    "export_models",
    "load_trained",
    "prepare_cases",
    "train_landmarks",
]

MODEL_VERSION: Final = "0.5.0"  # the shipped 0.4 was trained while this said 0.3.0 (metadata corrected)
WHOLE_ONNX: Final = "landmarks_whole.onnx"
CROP_ONNX: Final = "landmarks_crop.onnx"
WHOLE_PT: Final = "landmarks_whole.pt"
CROP_PT: Final = "landmarks_crop.pt"
F32 = NDArray[np.float32]


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (stored in ``train_report.json``)."""

    data: Path
    out: Path
    seed: int
    minutes: float = 25.0
    steps: tuple[int, int] | None = None  # (stage 1, stage 2); None: fit the wall-clock budget
    # Share of the budget for stage 1 (the rest minus export time goes to stage 2); None: 0.5 from a
    # random init, 0.2 when warm-started (stage 1 then only has to adapt; the crop stage is the limit).
    stage1_share: float | None = None
    batch_whole: int = 4
    batch_crop: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    crops_per_region: int = 8
    jitter_mm: float = 12.0
    models_dir: Path | None = None  # where the ONNX files go; None: ``out``
    max_cases: int | None = None
    threads: int = 2
    # Crop stage network: width and heatmap stride (0.1/0.2: 8 and 4; 0.3: 8 and 2).
    crop_width: int = 8
    crop_stride: int = 2
    # Weight of the soft-argmax distance (mm) next to the heatmap cross-entropy (0: heatmaps only).
    coord_weight: float = 0.5
    # Crop regions drawn as hip / knee / ankle: six of the eight landmarks sit in the knee crop.
    region_probs: tuple[float, float, float] = (0.25, 0.5, 0.25)
    # Share of whole-film draws taken from the cases that have bone masks (label volumes).
    p_mask_case: float = 0.3
    # Every sample is mirrored so the measured leg looks like this side's leg (None: no mirroring, and
    # random flips in the augmentation instead, the 0.1 behaviour that cannot choose a leg on bilateral
    # films). Recorded as the ONNX metadata ``canonical_side``, which the runtime detector follows.
    canonical_side: str | None = "R"
    # Start from the weights in ``init_from/landmarks_{whole,crop}.pt`` instead of a random init.
    init_from: Path | None = None
    # Targets where the film shows the landmarks (truth's ``landmarks_film``: a stitched film's zones
    # carry their registration error) rather than the geometric projection (``landmarks_2d``), which is
    # up to +-1.5 mm off on stitched films (docs/landmarks.md, fourth pass). 0.1-0.3 trained on the latter.
    film_truth: bool = True

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}

    @property
    def stage1_fraction(self) -> float:
        if self.stage1_share is not None:
            return self.stage1_share
        return 0.2 if self.init_from is not None else 0.5


@dataclass(frozen=True)
class TrainResult:
    checkpoint: Path
    loss_plot: Path
    report: Path
    onnx: tuple[Path, ...]
    steps: tuple[int, int]
    parity: tuple[tuple[str, float], ...]
    final_loss: tuple[float, float]
    train_seeds: tuple[int, ...]
    history: dict[str, list[float]] = field(default_factory=dict)


# --- data -------------------------------------------------------------------------------------------
def prepare_cases(
    root: Path,
    rng: np.random.Generator,
    *,
    crops_per_region: int,
    jitter_mm: float,
    max_cases: int | None = None,
    split: str = "train",
    canonical_side: str | None = None,
    film_truth: bool = True,
) -> list[PreparedCase]:
    """Read every case of ``root`` (``split`` seeds only) into whole-film and crop samples (mirrored to
    ``canonical_side``, see :func:`export.datasets.landmark_samples.whole_film_sample`)."""
    index = build_index(root, split)
    seeds = index.seeds[:max_cases] if max_cases else index.seeds
    if not seeds:
        raise InputError(f"no complete cases under {root}", reason="no_cases")
    shapes = {r: CROP_GEOMETRY.shape for r in REGION_NAMES}
    out: list[PreparedCase] = []
    for seed in tqdm(seeds, desc="reading cases", unit="case", leave=False):
        case = index.load(seed)
        if film_truth:
            case = case.on_film()
        labels = load_bone_labels(case.labels_path) if case.labels_path is not None else None
        whole = whole_film_sample(
            case,
            mm_per_px=WHOLE_GEOMETRY.mm_per_px,
            shape=WHOLE_GEOMETRY.shape,
            labels=labels,
            canonical_side=canonical_side,
        )
        crops: list[CropSample] = []
        for _ in range(crops_per_region):
            specs = sample_crop_specs(
                rng, case, jitter_mm=jitter_mm, mm_per_px=CROP_GEOMETRY.mm_per_px, shapes=shapes
            )
            crops.extend(crop_sample(case, s, canonical_side=canonical_side) for s in specs)
        out.append(PreparedCase(seed=seed, whole=whole, crops=tuple(crops)))
    log.info(
        "prepared %d cases (%d crops, %d with bone masks)",
        len(out),
        sum(len(c.crops) for c in out),
        sum(c.has_masks for c in out),
    )
    return out


# --- loop -------------------------------------------------------------------------------------------
def _cosine(step: int, total: int, lr: float) -> float:
    warm = 50  # fixed, so the first steps do not depend on the total (budget runs replay exactly)
    if step < warm:
        return lr * (step + 1) / warm
    t = (step - warm) / max(1, total - warm)
    return lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


def _run_stage(
    name: str,
    model: nn.Module,
    step_fn: Callable[[nn.Module, np.random.Generator], torch.Tensor],
    rng: np.random.Generator,
    cfg: TrainConfig,
    *,
    steps: int | None,
    budget_s: float,
) -> tuple[int, list[float]]:
    """Train ``model`` for ``steps`` steps, or as many as fit ``budget_s``: the total is planned after
    10 steps and re-planned every 25 steps from the measured speed (the cosine follows the plan)."""
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    model.train()
    losses: list[float] = []
    total = steps
    adaptive = steps is None
    warm, probe = 2, 10  # steps 1-2 (allocator, thread pools) are slow; time steps 3-10
    t0 = time.perf_counter()
    t_warm = t0
    bar = tqdm(desc=f"train {name}", unit="step", total=total, dynamic_ncols=True)
    step = 0
    while total is None or step < total:
        lr = _cosine(step, total if total is not None else 10_000, cfg.lr)
        for grp in opt.param_groups:
            grp["lr"] = lr
        loss = step_fn(model, rng)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}", lr=f"{lr:.2e}")
        if step == warm:
            t_warm = time.perf_counter()
        if adaptive and (step == probe or (step > probe and step % 25 == 0)):
            # re-plan from the mean speed since warm-up: the machine is shared, speed drifts
            now = time.perf_counter()
            per = (now - t_warm) / (step - warm)
            new_total = max(step + 1, step + int((budget_s - (now - t0)) / per))
            if total is None:
                log.info("%s: %.2f s/step -> %d steps in %.0f s", name, per, new_total, budget_s)
            total = new_total
            bar.total = total
            bar.refresh()
    bar.close()
    log.info("%s: %d steps in %.0f s, last loss %.4f", name, step, time.perf_counter() - t0, losses[-1])
    return step, losses


def _plot_losses(history: dict[str, list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(history), figsize=(5 * len(history), 3.5))
    for ax, (name, vals) in zip(np.atleast_1d(axes), history.items(), strict=True):
        v = np.asarray(vals)
        ax.plot(v, lw=0.5, alpha=0.4, label="step")
        k = max(1, len(v) // 50)
        if len(v) >= k:
            sm = np.convolve(v, np.ones(k) / k, mode="valid")
            ax.plot(np.arange(k - 1, len(v)), sm, lw=1.5, label=f"mean of {k}")
        ax.set_yscale("log")
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _metadata(
    stage: str,
    geom: NetGeometry,
    cfg: TrainConfig,
    steps: int,
    seeds: Sequence[int],
    arch: dict[str, int] | None = None,
) -> dict[str, Any]:
    return {
        **({"arch": arch} if arch else {}),
        "version": MODEL_VERSION,
        "training_seed": int(cfg.seed),
        "input_geometry": geom.to_dict(),
        "stage": stage,
        "landmarks": list(_names()),
        "regions": {r: list(REGIONS[r]) for r in REGION_NAMES},
        "steps": int(steps),
        "train_cases": len(seeds),
        "train_seed_range": [int(min(seeds)), int(max(seeds))],
        **({"canonical_side": cfg.canonical_side} if cfg.canonical_side else {}),
    }


def _names() -> tuple[str, ...]:
    from appliance.analytics.landmarks import LANDMARKS_2D

    return tuple(LANDMARKS_2D)


def export_models(
    whole: WholeFilmNet,
    crop: CropNet,
    out_dir: Path,
    metadata: tuple[dict[str, Any], dict[str, Any]],
    examples: tuple[torch.Tensor, torch.Tensor],
) -> tuple[tuple[Path, Path], tuple[tuple[str, float], ...]]:
    """Export both stages to ONNX (opset 17, dynamic batch, metadata) and check ORT parity."""
    from export.onnx_export import export_onnx, ort_parity

    whole.eval()
    crop.eval()
    r1 = export_onnx(
        whole,
        (examples[0],),
        out_dir / WHOLE_ONNX,
        input_names=("film",),
        output_names=("heatmaps", "mask_logits"),
        metadata=metadata[0],
        name="landmarks_whole",
    )
    r2 = export_onnx(
        crop,
        (examples[1],),
        out_dir / CROP_ONNX,
        input_names=("crop",),
        output_names=("heatmaps",),
        metadata=metadata[1],
        name="landmarks_crop",
    )
    for r in (r1, r2):
        if not r.opcheck.ok:
            log.warning("%s", r.opcheck.summary())
    p1 = ort_parity(whole, (examples[0],), r1.path)
    p2 = ort_parity(crop, (examples[1],), r2.path)
    parity = tuple((f"whole.{n}", d) for n, d in p1.max_abs_diff) + tuple(
        (f"crop.{n}", d) for n, d in p2.max_abs_diff
    )
    for n, d in parity:
        log.info("ORT parity %s: max |diff| %.2e", n, d)
    if not (p1.ok and p2.ok):
        raise InputError(f"ONNX Runtime differs from PyTorch: {parity}", reason="onnx_parity")
    return (r1.path, r2.path), parity


def load_trained(models_dir: Path) -> tuple[WholeFilmNet, CropNet, dict[str, Any]]:
    """The two stages from ``models_dir/landmarks_{whole,crop}.pt`` (eval mode) and their metadata."""
    p1, p2 = Path(models_dir) / WHOLE_PT, Path(models_dir) / CROP_PT
    if not (p1.is_file() and p2.is_file()):
        raise InputError(
            f"trained landmark weights missing in {models_dir} ({WHOLE_PT}, {CROP_PT}); "
            "run `xr3d train landmarks`",
            reason="model_missing",
        )
    s1 = torch.load(p1, map_location="cpu", weights_only=True)
    s2 = torch.load(p2, map_location="cpu", weights_only=True)
    m1, m2 = json.loads(s1["metadata"]), json.loads(s2["metadata"])
    # weights saved before "arch" was recorded (0.1, 0.2) are the default networks
    whole, crop = WholeFilmNet(), CropNet(**m2.get("arch", {"width": 8, "stride": 4}))
    whole.load_state_dict(s1["state"])
    crop.load_state_dict(s2["state"])
    whole.eval()
    crop.eval()
    return whole, crop, {"whole": m1, "crop": m2}


def _load_matching(model: nn.Module, source: nn.Module) -> tuple[int, list[str]]:
    """Copy every tensor of ``source`` whose name and shape exist in ``model``; returns (copied, the
    names left at their fresh init). A 0.2 crop net (stride 4) seeds the stride-2 net of the same
    width in everything but the new stride-2 block and the output convolution."""
    own = model.state_dict()
    src = source.state_dict()
    fresh: list[str] = []
    n = 0
    for k, v in own.items():
        if k in src and src[k].shape == v.shape:
            own[k] = src[k].clone()
            n += 1
        else:
            fresh.append(k)
    model.load_state_dict(own)
    return n, fresh


def _initial_models(cfg: TrainConfig) -> tuple[WholeFilmNet, CropNet]:
    """Random init (seeded by the caller), or the weights of ``cfg.init_from`` wherever the networks
    match (:func:`_load_matching`)."""
    whole, crop = WholeFilmNet(), CropNet(cfg.crop_width, cfg.crop_stride)
    if cfg.init_from is None:
        return whole, crop
    w0, c0, _ = load_trained(cfg.init_from)
    for name, net, src in (("stage 1", whole, w0), ("stage 2", crop, c0)):
        n, fresh = _load_matching(net, src)
        log.info("%s: %d tensors from %s, fresh: %s", name, n, cfg.init_from, ", ".join(fresh) or "none")
    return whole, crop


def train_landmarks(cfg: TrainConfig) -> TrainResult:
    """Read the data, train stage 1 then stage 2, plot, checkpoint, export to ONNX, check parity."""
    t_start = time.perf_counter()
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    root = np.random.SeedSequence(cfg.seed)
    rng_data, rng_s1, rng_s2 = (np.random.default_rng(s) for s in root.spawn(3))
    cfg.out.mkdir(parents=True, exist_ok=True)
    models_dir = cfg.models_dir or cfg.out
    models_dir.mkdir(parents=True, exist_ok=True)

    cases = prepare_cases(
        cfg.data,
        rng_data,
        crops_per_region=cfg.crops_per_region,
        jitter_mm=cfg.jitter_mm,
        max_cases=cfg.max_cases,
        canonical_side=cfg.canonical_side,
        film_truth=cfg.film_truth,
    )
    seeds = tuple(c.seed for c in cases)
    prep_s = time.perf_counter() - t_start
    budget = max(0.0, cfg.minutes * 60.0 - prep_s - 60.0)  # keep ~1 min for plotting and export

    whole, crop = _initial_models(cfg)
    cg = crop.geometry
    flips = cfg.canonical_side is None

    def step_whole(m: nn.Module, rng: np.random.Generator) -> torch.Tensor:
        b = whole_batch(rng, cases, cfg.batch_whole, flips=flips, p_mask_case=cfg.p_mask_case)
        heat, mlog = m.logits(b.images)  # type: ignore[operator]
        loss = heatmap_loss(heat, b.heatmaps, b.weights)
        if cfg.coord_weight > 0:
            cell_mm = WHOLE_GEOMETRY.mm_per_px * WHOLE_GEOMETRY.stride
            loss = loss + cfg.coord_weight * coord_loss(heat, b.points, b.weights, cell_mm) / cell_mm
        if b.masks is not None and b.mask_weights is not None:
            loss = loss + mask_loss(mlog, b.masks, b.mask_weights)
        return loss

    def step_crop(m: nn.Module, rng: np.random.Generator) -> torch.Tensor:
        b = crop_batch(rng, cases, cfg.batch_crop, cg, flips=flips, region_probs=cfg.region_probs)
        out: torch.Tensor = m.logits(b.images)  # type: ignore[operator]
        loss = heatmap_loss(out, b.heatmaps, b.weights)
        if cfg.coord_weight > 0:
            loss = loss + cfg.coord_weight * coord_loss(out, b.points, b.weights, cg.mm_per_px * cg.stride)
        return loss

    t1 = time.perf_counter()
    n1, l1 = _run_stage(
        "stage1-whole",
        whole,
        step_whole,
        rng_s1,
        cfg,
        steps=cfg.steps[0] if cfg.steps else None,
        budget_s=budget * cfg.stage1_fraction,
    )
    used = time.perf_counter() - t1
    n2, l2 = _run_stage(
        "stage2-crop",
        crop,
        step_crop,
        rng_s2,
        cfg,
        steps=cfg.steps[1] if cfg.steps else None,
        budget_s=max(30.0, budget - used),
    )
    history = {"stage 1 (whole film, 2 mm/px)": l1, "stage 2 (crops, 0.5 mm/px)": l2}
    plot = cfg.out / "loss_curve.png"
    _plot_losses(history, plot)

    meta1 = _metadata("whole", WHOLE_GEOMETRY, cfg, n1, seeds)
    meta2 = _metadata("crop", cg, cfg, n2, seeds, crop.arch())
    whole.eval()
    crop.eval()
    ckpt = cfg.out / "checkpoint.pt"
    torch.save(
        {"whole": whole.state_dict(), "crop": crop.state_dict(), "config": cfg.to_dict(), "steps": (n1, n2)},
        ckpt,
    )
    torch.save({"state": whole.state_dict(), "metadata": json.dumps(meta1)}, models_dir / WHOLE_PT)
    torch.save({"state": crop.state_dict(), "metadata": json.dumps(meta2)}, models_dir / CROP_PT)

    ex1 = torch.from_numpy(cases[0].whole.image[None, None].copy())
    ex2 = torch.from_numpy(cases[0].crops[0].image[None, None].copy())
    paths, parity = export_models(whole, crop, models_dir, (meta1, meta2), (ex1, ex2))

    report = cfg.out / "train_report.json"
    final = (float(np.mean(l1[-50:])), float(np.mean(l2[-50:])))
    report.write_text(
        json.dumps(
            {
                "config": cfg.to_dict(),
                "steps": [n1, n2],
                "train_seeds": list(seeds),
                "final_loss": list(final),
                "parity_max_abs_diff": dict(parity),
                "onnx": [str(p) for p in paths],
                "minutes": (time.perf_counter() - t_start) / 60.0,
            },
            indent=2,
        )
    )
    log.info("training done in %.1f min", (time.perf_counter() - t_start) / 60.0)
    return TrainResult(
        checkpoint=ckpt,
        loss_plot=plot,
        report=report,
        onnx=paths,
        steps=(n1, n2),
        parity=parity,
        final_loss=final,
        train_seeds=seeds,
        history=history,
    )


def build_shipped(stage: str, models_dir: Path | None = None) -> Any:
    """The trained ``stage`` ("whole" or "crop") as an :class:`export.reference_models.ReferenceModel`
    for ``xr3d export onnx --model landmarks_<stage>`` (weights from ``models/landmarks_<stage>.pt``)."""
    from export.reference_models import ReferenceModel

    d = models_dir or Path(__file__).resolve().parents[2] / "models"
    whole, crop, meta = load_trained(d)
    gen = torch.Generator().manual_seed(0)
    if stage == "whole":
        g = WHOLE_GEOMETRY
        ex = torch.rand((1, 1, g.rows, g.cols), generator=gen)
        return ReferenceModel(
            "landmarks_whole", whole, (ex,), ("film",), ("heatmaps", "mask_logits"), meta["whole"]
        )
    if stage == "crop":
        g = CROP_GEOMETRY
        ex = torch.rand((1, 1, g.rows, g.cols), generator=gen)
        return ReferenceModel("landmarks_crop", crop, (ex,), ("crop",), ("heatmaps",), meta["crop"])
    raise InputError(f"unknown landmark stage {stage!r}; choose whole or crop", reason="unknown_model")
