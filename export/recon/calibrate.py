"""Label-logit calibration of a trained reconstruction decoder (recon-1.3+).

Training weights the cross-entropy of the small bones up to ``CLASS_W_MAX`` x (export/recon/train.py) and adds
a soft Dice term, both of which move the argmax boundary outwards: on held-out knees recon-1.2 predicted 3-4x
more false-positive than false-negative femur/tibia voxels and 20-80x more for the fibula and patella. A
weighted cross-entropy's optimum is the unweighted one shifted by ``log w`` per class, so a per-class offset
added to the logits undoes it; here the offsets are fitted directly for Dice.

How: the decoder is run (through ``appliance.recon.infer``, i.e. ONNX Runtime, exactly as at runtime) on
every 1 mm voxel of each calibration anatomy; voxels whose two best logits differ by more than ``BAND`` keep
their label under any offsets in ``OFFSET_RANGE`` and are only counted, the rest are kept; a coordinate
ascent over a grid of offsets (background fixed at 0) maximises the sum over the four bones of the mean
per-anatomy Dice. The offsets are written into the decoder's ONNX metadata
(``appliance.recon.infer.LABEL_OFFSETS_META``), per mode (biplanar and AP only), with a JSON report.

Calibration anatomies must not be training anatomies (checked against the training report's seeds): the
network fits its own training anatomies more tightly, which would bias the offsets towards zero.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
from numpy.typing import NDArray

from appliance.errors import InputError
from appliance.recon.infer import (
    CUBE_VOXELS,
    DECODER_MODEL,
    DEFAULT_MODELS_DIR,
    FRAME_CANONICAL,
    FRAME_META,
    LABEL_OFFSET_MODES,
    LABEL_OFFSETS_META,
    N_CLASSES,
    ORIENT_MODEL,
    Reconstructor,
)

log = logging.getLogger(__name__)

OFFSET_RANGE = (-5.0, 2.0)
OFFSET_STEP = 0.25
# Offsets in OFFSET_RANGE (background 0) change a difference of two logits by at most 2 - (-5) = 7.
BAND = 7.5
REPORT_NAME = "recon_calibration.json"

F32 = NDArray[np.float32]


@dataclass(frozen=True, eq=False)
class CaseLogits:
    """One calibration anatomy: confusion counts (N_CLASSES, 3: tp, fp, fn) of the voxels whose label no
    allowed offset changes, and the logits (M, N_CLASSES) and true labels (M,) of the others."""

    fixed: NDArray[np.int64]
    logits: F32
    truth: NDArray[np.uint8]


@dataclass(frozen=True)
class Calibration:
    offsets: dict[str, list[float]]
    dice_before: dict[str, list[float]]  # mean per-anatomy Dice of femur, tibia, fibula, patella
    dice_after: dict[str, list[float]]
    seeds: list[int]
    report: str


def _confusion(pred: NDArray[np.integer], truth: NDArray[np.integer]) -> NDArray[np.int64]:
    out = np.zeros((N_CLASSES, 3), np.int64)
    for c in range(N_CLASSES):
        p, t = pred == c, truth == c
        out[c] = ((p & t).sum(), (p & ~t).sum(), (~p & t).sum())
    return out


def band_case(logits: F32, truth: NDArray[np.uint8], band: float = BAND) -> CaseLogits:
    """Split one anatomy's voxels into those no allowed offset can relabel (counted) and the rest (kept)."""
    lg = np.asarray(logits, np.float32).reshape(-1, N_CLASSES)
    t = np.asarray(truth, np.uint8).reshape(-1)
    top2 = np.partition(lg, N_CLASSES - 2, axis=1)[:, -2:]
    near = (top2[:, 1] - top2[:, 0]) < band
    fixed = _confusion(np.argmax(lg[~near], axis=1), t[~near])
    return CaseLogits(fixed, np.ascontiguousarray(lg[near]), np.ascontiguousarray(t[near]))


def case_dice(case: CaseLogits, offsets: NDArray[np.floating]) -> NDArray[np.float64]:
    """Dice of classes 1.. with ``offsets`` added to the logits; NaN where a bone is in neither."""
    conf = case.fixed + _confusion(np.argmax(case.logits + offsets.astype(np.float32), axis=1), case.truth)
    tp, fp, fn = conf[1:, 0], conf[1:, 1], conf[1:, 2]
    den = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, 2.0 * tp / np.maximum(den, 1), np.nan)


def mean_dice(cases: Sequence[CaseLogits], offsets: NDArray[np.floating]) -> NDArray[np.float64]:
    """Mean per-anatomy Dice per bone (femur, tibia, fibula, patella)."""
    d = np.array([case_dice(c, offsets) for c in cases]).reshape(-1, N_CLASSES - 1)
    seen = np.isfinite(d)
    total = np.where(seen, d, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(seen.any(axis=0), total / np.maximum(seen.sum(axis=0), 1), np.nan)


def fit_offsets(
    cases: Sequence[CaseLogits],
    *,
    grid: Iterable[float] | None = None,
    passes: int = 8,
) -> NDArray[np.float64]:
    """Coordinate ascent of the bones' offsets (background 0) on ``grid`` for the largest sum of mean
    Dice (passes until nothing moves); ties go to the offset nearest 0, so a calibrated model stays put."""
    values = np.asarray(
        list(grid) if grid is not None else np.arange(OFFSET_RANGE[0], OFFSET_RANGE[1] + 1e-9, OFFSET_STEP)
    )
    if values.min() < OFFSET_RANGE[0] or values.max() > OFFSET_RANGE[1]:
        raise ValueError(f"offset grid must lie in {OFFSET_RANGE} (the band assumes it)")
    off = np.zeros(N_CLASSES)
    best = float(np.nansum(mean_dice(cases, off)))
    for _ in range(passes):
        changed = False
        for c in range(1, N_CLASSES):
            cur = off[c]
            for v in sorted(values, key=abs):
                trial = off.copy()
                trial[c] = v
                score = float(np.nansum(mean_dice(cases, trial)))
                if score > best + 1e-6 or (abs(score - best) <= 1e-6 and abs(v) < abs(off[c])):
                    best, off = score, trial
            changed |= off[c] != cur
        if not changed:
            break
    return off


def _load_item(path: Path) -> tuple[int, F32, F32, NDArray[np.float64], NDArray[np.uint8]]:
    with np.load(path) as d:
        return (
            int(d["seed"]),
            d["films"].astype(np.float32),
            d["mats"].astype(np.float32),
            d["affine"].astype(np.float64),
            d["labels"].astype(np.uint8),
        )


def dense_logits(rec: Reconstructor, frames: F32, mats: F32, present: F32, stride: int = 1) -> F32:
    """Uncalibrated label logits at every ``stride``-th voxel of the cube along each axis, (M^3, N_CLASSES)
    in C order (M = ceil(CUBE_VOXELS / stride)), matching ``labels[::stride, ::stride, ::stride]``."""
    full = np.arange(CUBE_VOXELS, dtype=np.float32) * np.float32(2.0 / (CUBE_VOXELS - 1)) - np.float32(1.0)
    ax = full[::stride]
    n = len(ax)
    enc = rec.encode(frames, mats, present)
    out = np.empty((n**3, N_CLASSES), np.float32)
    plane = n * n
    jj, kk = np.meshgrid(ax, ax, indexing="ij")
    for i in range(n):  # one axial plane at a time keeps the point array small
        pts = np.stack([np.full(plane, ax[i], np.float32), jj.reshape(-1), kk.reshape(-1)], axis=1)
        out[i * plane : (i + 1) * plane] = rec.decode(enc, pts, calibrated=False)[1]
    return out


def write_offsets(decoder: Path, offsets: dict[str, list[float]]) -> None:
    """Set the decoder's label-offset metadata in place (other metadata and the graph unchanged)."""
    model = onnx.load(str(decoder))
    kept = [(p.key, p.value) for p in model.metadata_props if p.key != LABEL_OFFSETS_META]
    del model.metadata_props[:]
    for k, v in [*kept, (LABEL_OFFSETS_META, json.dumps(offsets, sort_keys=True))]:
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, str(decoder))


def calibrate(
    models_dir: Path,
    data: Path,
    *,
    train_seeds: Iterable[int] = (),
    max_cases: int | None = None,
    threads: int = 1,
    stride: int = 1,
) -> Calibration:
    """Fit and write the label offsets of ``models_dir``'s decoder on the samples in ``data`` (every
    ``stride``-th voxel per axis; 1, every voxel, is what the shipped offsets use)."""
    from engines.config import EngineConfig

    files = sorted(Path(data).glob("recon_*.npz"))[:max_cases]
    if not files:
        raise InputError(f"no recon_<seed>_<pose>.npz calibration samples in {data}", reason="no_data")
    if _decoder_frame(Path(models_dir)) == FRAME_CANONICAL:
        ensure_orient_model(Path(models_dir))
    trained = set(int(s) for s in train_seeds)
    cases: dict[str, list[CaseLogits]] = {m: [] for m in LABEL_OFFSET_MODES}
    seeds: list[int] = []
    with Reconstructor(models_dir, EngineConfig(backend="auto", cpu_threads=threads)) as rec:
        for f in files:
            seed, frames, mats, _affine, labels = _load_item(f)
            if seed in trained:
                raise InputError(
                    f"calibration sample {f.name} is a training anatomy (seed {seed})", reason="seed_overlap"
                )
            seeds.append(seed)
            for mode, present in (("biplanar", (1.0, 1.0)), ("ap_only", (1.0, 0.0))):
                lg = dense_logits(rec, frames, mats, np.asarray(present, np.float32), stride)
                cases[mode].append(band_case(lg, labels[::stride, ::stride, ::stride]))
            log.info("calibration: %s decoded (%d/%d)", f.name, len(seeds), len(files))
    offsets: dict[str, list[float]] = {}
    before: dict[str, list[float]] = {}
    after: dict[str, list[float]] = {}
    for mode, cs in cases.items():
        off = fit_offsets(cs)
        offsets[mode] = [round(float(v), 4) for v in off]
        before[mode] = [round(float(v), 4) for v in mean_dice(cs, np.zeros(N_CLASSES))]
        after[mode] = [round(float(v), 4) for v in mean_dice(cs, off)]
        log.info("calibration %s: offsets %s, Dice %s -> %s", mode, offsets[mode], before[mode], after[mode])
    write_offsets(Path(models_dir) / DECODER_MODEL, offsets)
    report = Path(models_dir) / REPORT_NAME
    result = Calibration(offsets, before, after, sorted(set(seeds)), str(report))
    report.write_text(json.dumps(asdict(result), indent=2) + "\n")
    return result


def _decoder_frame(models_dir: Path) -> str | None:
    """The frame (``FRAME_META``) the decoder in ``models_dir`` reconstructs in, None when unrecorded."""
    path = models_dir / DECODER_MODEL
    if not path.is_file():
        return None
    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return meta.get(FRAME_META)


def ensure_orient_model(models_dir: Path, shipped_dir: Path | None = None) -> Path:
    """The orientation model a canonical calibration needs beside the new ONNX files: kept if present,
    else copied from the shipped models (it is trained separately, ``xr3d train recon-orient``)."""
    dst = models_dir / ORIENT_MODEL
    if dst.is_file():
        return dst
    src = (shipped_dir or DEFAULT_MODELS_DIR) / ORIENT_MODEL
    if not src.is_file():
        raise InputError(
            f"a canonical calibration needs {ORIENT_MODEL} in {models_dir} or {src.parent}",
            reason="model_missing",
        )
    shutil.copyfile(src, dst)
    log.info("copied the shipped %s into %s for the calibration", ORIENT_MODEL, models_dir)
    return dst
