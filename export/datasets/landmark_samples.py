"""Training samples for the landmark model, built from simulated case folders.

A case folder (``xr3d simulate``; read by :mod:`export.datasets.landmark_cases`) holds ``truth.json`` and
``longleg_ap.dcm``. From it this module builds

* a **whole-film sample**: the film resampled to a fixed physical pixel size at the detector (default
  2 mm/px; spacing from the DICOM ImagerPixelSpacing) and centred in a fixed shape, with the eight
  landmarks of ``LANDMARKS_2D`` in that frame;
* **crop samples**: high-resolution windows (default 0.5 mm/px, 128 x 128) around hip, knee and ankle,
  centred at a jittered position so that the crop stage learns to refine a coarse guess, with the
  landmarks in crop pixels.

Every sample carries ``affine_to_film`` (3x3, sample (col, row) -> film (col, row)), so a prediction
maps back to film pixels exactly. Approximate femur / tibia masks come from forward-projecting the case's
label volume (``labels_leg.nii.gz``) through the film's recorded geometry when that file exists; else
the masks are None and ``masks_available`` is False.

An index maps seeds to case folders and refuses seeds outside its split's range
(``export.simulator.cli.SEED_RANGES``), so an evaluation case can never enter a training set.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Literal

import numpy as np
from numpy.typing import NDArray

from appliance.errors import InputError
from appliance.landmarks.detector import normalise_side
from appliance.landmarks.heatmaps import frame_affine
from export.datasets.augment import transform_points, visible_in, warp_affine
from export.datasets.bone_masks import (
    FEMUR_LABEL,
    TIBIA_LABEL,
    BoneLabels,
    frame_geometry,
    load_bone_labels,
    project_bone_masks,
)
from export.datasets.landmark_cases import (
    LONGLEG_FILM,
    CaseData,
    FilmImage,
    entry_film_points,
    entry_in_field,
    entry_open_field,
    film_landmarks,
    load_case,
    read_film,
    read_truth_and_film,
)
from export.simulator.cli import SEED_RANGES

log = logging.getLogger(__name__)

__all__ = [
    "CROP_SHAPES",
    "FEMUR_LABEL",
    "LONGLEG_FILM",
    "REGIONS",
    "TIBIA_LABEL",
    "BoneLabels",
    "CaseData",
    "CaseIndex",
    "CropSample",
    "CropSpec",
    "FilmImage",
    "SeedRangeError",
    "WholeFilmSample",
    "build_index",
    "check_seeds",
    "crop_sample",
    "entry_film_points",
    "entry_in_field",
    "entry_open_field",
    "film_landmarks",
    "frame_geometry",
    "load_bone_labels",
    "load_case",
    "mirrors",
    "project_bone_masks",
    "read_film",
    "read_truth_and_film",
    "sample_crop_specs",
    "whole_film_sample",
]

F32 = NDArray[np.float32]
F64 = NDArray[np.float64]
Shape = tuple[int, int]

# Landmarks each crop stage refines (appliance/analytics/landmarks.py names).
REGIONS: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType(
    {
        "hip": ("FHC",),
        "knee": ("FKC", "MDFC", "LDFC", "MTP", "LTP", "TKC"),
        "ankle": ("AC",),
    }
)
# Crop shapes (rows, cols) at the default 0.5 mm/px: 64 mm around the hip and ankle centres; 80 x 112 mm
# around the knee, whose landmarks span the ~75-85 mm tibial plateau, with room for the jitter.
CROP_SHAPES: Final[Mapping[str, tuple[int, int]]] = MappingProxyType(
    {"hip": (128, 128), "knee": (160, 224), "ankle": (128, 128)}
)
_CASE_DIR = re.compile(r"^case_(\d+)$")


class SeedRangeError(InputError):
    """A seed outside the range reserved for the requested split (train / eval / demo)."""

    reason = "seed_range"


# --- samples --------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class WholeFilmSample:
    seed: int
    side: str
    names: tuple[str, ...]
    image: F32  # (rows, cols) in [0, 1]
    landmarks: F64  # (8, 2) sample (col, row)
    visible: NDArray[np.bool_]
    mm_per_px: float  # at the detector
    affine_to_film: F64  # 3x3: sample (col, row, 1) -> film (col, row, 1)
    femur_mask: NDArray[np.bool_] | None
    tibia_mask: NDArray[np.bool_] | None

    @property
    def masks_available(self) -> bool:
        return self.femur_mask is not None and self.tibia_mask is not None


def _scale_frame(
    f_col: float, f_row: float, centre_film: tuple[float, float], shape: Shape, *, mirror: bool = False
) -> F64:
    """Sample -> film affine of an axis-aligned frame of ``shape`` whose centre sits on ``centre_film``
    and whose pixels are ``f`` film pixels wide (the runtime's :func:`frame_affine`)."""
    return frame_affine(f_col, f_row, centre_film, shape, mirror=mirror)


def mirrors(case_side: str, canonical_side: str | None) -> bool:
    """Whether a case's frames are mirrored so its leg looks like a ``canonical_side`` leg."""
    if canonical_side is None:
        return False
    want = normalise_side(canonical_side)
    have = normalise_side(case_side)
    if want is None or have is None:
        raise InputError(f"cannot mirror side {case_side!r} to {canonical_side!r}", reason="bad_side")
    return have != want


def _masks(
    labels: BoneLabels, case: CaseData, a: F64, shape: Shape, mirror: bool
) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    """Bone masks of a frame: projected through the unmirrored frame, then flipped if mirrored."""
    if not mirror:
        return project_bone_masks(labels, frame_geometry(case.geometry, a, shape))
    # The mirrored frame's column c is the unmirrored frame's column cols - 1 - c.
    flip = np.array([[-1.0, 0.0, shape[1] - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    fm, tm = project_bone_masks(labels, frame_geometry(case.geometry, a @ flip, shape))
    return fm[:, ::-1].copy(), tm[:, ::-1].copy()


def whole_film_sample(
    case: CaseData,
    *,
    mm_per_px: float = 2.0,
    shape: Shape = (672, 256),
    labels: BoneLabels | None = None,
    fit: Literal["crop", "shrink"] = "crop",
    canonical_side: str | None = None,
) -> WholeFilmSample:
    """The film at ``mm_per_px`` (detector scale), centred in ``shape`` with black padding; mirrored
    left-right when ``canonical_side`` is given and the case's leg is the other side (so the measured
    leg always looks like a ``canonical_side`` leg, and on a bilateral film sits on that side).

    A film larger than the frame (padded exports can be ~30 % wider) is cut around its centre with
    ``fit="crop"`` (the pixel size stays fixed; landmarks falling outside are flagged not visible), or
    resampled coarser with ``fit="shrink"`` (the pixel size actually used is in ``mm_per_px``)."""
    rows, cols = case.film.image.shape
    s_row, s_col = case.film.spacing_mm
    need = max(rows * s_row / shape[0], cols * s_col / shape[1])
    mm = float(mm_per_px)
    if need > mm:
        if fit == "shrink":
            mm = need
        elif fit != "crop":
            raise InputError(f"fit must be 'crop' or 'shrink', got {fit!r}")
        log.info("case %d: film exceeds %s at %.2f mm/px (%s)", case.seed, shape, mm_per_px, fit)
    centre = ((cols - 1) / 2.0, (rows - 1) / 2.0)
    mirror = mirrors(case.side, canonical_side)
    a = _scale_frame(mm / s_col, mm / s_row, centre, shape, mirror=mirror)
    fwd = np.linalg.inv(a)
    image = warp_affine(case.film.image, fwd, shape, fill=0.0)
    lm = transform_points(fwd, case.landmarks)
    femur = tibia = None
    if labels is not None:
        femur, tibia = _masks(labels, case, a, shape, mirror)
    return WholeFilmSample(
        seed=case.seed,
        side=case.side,
        names=case.names,
        image=image,
        landmarks=lm,
        visible=case.in_field & visible_in(lm, shape),
        mm_per_px=mm,
        affine_to_film=a,
        femur_mask=femur,
        tibia_mask=tibia,
    )


@dataclass(frozen=True)
class CropSpec:
    """Where one crop is cut: its centre in film pixels, pixel size (detector mm) and shape.
    JSON-serialisable (``to_dict`` / ``from_dict``) so a crop replays exactly."""

    region: str
    centre_col: float
    centre_row: float
    mm_per_px: float
    rows: int
    cols: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "region": self.region,
            "centre_col": self.centre_col,
            "centre_row": self.centre_row,
            "mm_per_px": self.mm_per_px,
            "rows": self.rows,
            "cols": self.cols,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CropSpec:
        try:
            return cls(
                str(d["region"]),
                float(d["centre_col"]),
                float(d["centre_row"]),
                float(d["mm_per_px"]),
                int(d["rows"]),
                int(d["cols"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"incomplete crop spec: {exc}", reason="bad_crop_spec") from exc


def sample_crop_specs(
    rng: np.random.Generator,
    case: CaseData,
    *,
    jitter_mm: float = 10.0,
    mm_per_px: float = 0.5,
    shapes: Mapping[str, Shape] = CROP_SHAPES,
    regions: Iterable[str] = ("hip", "knee", "ankle"),
) -> tuple[CropSpec, ...]:
    """One crop per region whose landmarks are all in the field: centred on the mean of the region's
    landmarks plus a uniform offset of up to ``jitter_mm`` (detector mm) per axis; ``shapes`` gives
    each region's (rows, cols). The draws do not depend on which regions are in the field."""
    out: list[CropSpec] = []
    s_row, s_col = case.film.spacing_mm
    for region in regions:
        if region not in REGIONS:
            raise InputError(f"unknown crop region {region!r}; choose from {sorted(REGIONS)}")
        idx = [case.names.index(n) for n in REGIONS[region]]
        jc, jr = (float(rng.uniform(-jitter_mm, jitter_mm)) for _ in range(2))
        if not bool(np.all(case.in_field[idx])):
            continue
        c = case.landmarks[idx].mean(axis=0)
        rows, cols = shapes[region]
        out.append(
            CropSpec(region, float(c[0] + jc / s_col), float(c[1] + jr / s_row), mm_per_px, rows, cols)
        )
    return tuple(out)


@dataclass(frozen=True, eq=False)
class CropSample:
    seed: int
    spec: CropSpec
    names: tuple[str, ...]  # all eight landmarks, in LANDMARKS_2D order
    targets: tuple[str, ...]  # the ones this crop stage is responsible for
    image: F32
    landmarks: F64  # (8, 2) crop (col, row)
    visible: NDArray[np.bool_]
    affine_to_film: F64  # 3x3: crop (col, row, 1) -> film (col, row, 1)
    femur_mask: NDArray[np.bool_] | None
    tibia_mask: NDArray[np.bool_] | None

    @property
    def masks_available(self) -> bool:
        return self.femur_mask is not None and self.tibia_mask is not None


def crop_sample(
    case: CaseData,
    spec: CropSpec,
    *,
    labels: BoneLabels | None = None,
    canonical_side: str | None = None,
) -> CropSample:
    """Cut ``spec`` out of the case's film (bilinear, anti-aliased when coarser than the film),
    mirrored like :func:`whole_film_sample` when ``canonical_side`` is given."""
    s_row, s_col = case.film.spacing_mm
    shape = (spec.rows, spec.cols)
    mirror = mirrors(case.side, canonical_side)
    a = _scale_frame(
        spec.mm_per_px / s_col,
        spec.mm_per_px / s_row,
        (spec.centre_col, spec.centre_row),
        shape,
        mirror=mirror,
    )
    fwd = np.linalg.inv(a)
    image = warp_affine(case.film.image, fwd, shape, fill=0.0)
    lm = transform_points(fwd, case.landmarks)
    femur = tibia = None
    if labels is not None:
        femur, tibia = _masks(labels, case, a, shape, mirror)
    return CropSample(
        seed=case.seed,
        spec=spec,
        names=case.names,
        targets=REGIONS[spec.region],
        image=image,
        landmarks=lm,
        visible=case.in_field & visible_in(lm, shape),
        affine_to_film=a,
        femur_mask=femur,
        tibia_mask=tibia,
    )


# --- index ----------------------------------------------------------------------------------------
def check_seeds(seeds: Iterable[int], split: str) -> None:
    """Raise :class:`SeedRangeError` unless every seed lies in ``SEED_RANGES[split]``."""
    if split not in SEED_RANGES:
        raise InputError(f"unknown split {split!r}; choose from {sorted(SEED_RANGES)}", reason="bad_split")
    lo, hi = SEED_RANGES[split]
    bad = sorted(s for s in seeds if not lo <= s <= hi)
    if bad:
        shown = ", ".join(str(s) for s in bad[:10]) + (" ..." if len(bad) > 10 else "")
        owners = sorted({k for s in bad for k, (a, b) in SEED_RANGES.items() if a <= s <= b})
        raise SeedRangeError(
            f"{len(bad)} seed(s) outside the {split} range {lo}-{hi}: {shown}"
            + (f" (they belong to: {', '.join(owners)})" if owners else "")
            + f"; a {split} index may only hold {split} seeds",
        )


@dataclass(frozen=True)
class CaseIndex:
    """Seeds of one split mapped to their case folders (sorted by seed)."""

    split: str
    root: Path
    seeds: tuple[int, ...]

    def folder(self, seed: int) -> Path:
        if seed not in self.seeds:
            raise InputError(f"seed {seed} is not in this {self.split} index", reason="unknown_seed")
        return self.root / f"case_{seed}"

    def load(self, seed: int) -> CaseData:
        return load_case(self.folder(seed))

    def __len__(self) -> int:
        return len(self.seeds)


def build_index(root: Path, split: str, seeds: Iterable[int] | None = None) -> CaseIndex:
    """Index the complete ``case_<seed>`` folders under ``root`` (or exactly ``seeds``), refusing any
    seed outside ``split``'s range. Half-written folders (no truth.json) are skipped with a warning."""
    root = Path(root)
    if seeds is None:
        found: list[int] = []
        for p in sorted(root.iterdir()) if root.is_dir() else []:
            m = _CASE_DIR.match(p.name)
            if m is None or not p.is_dir():
                continue
            if not (p / "truth.json").is_file():
                log.warning("skipping %s: no truth.json", p)
                continue
            found.append(int(m.group(1)))
        chosen = sorted(found)
    else:
        chosen = sorted(set(int(s) for s in seeds))
    check_seeds(chosen, split)
    for s in chosen:
        if not (root / f"case_{s}" / "truth.json").is_file():
            raise InputError(f"case_{s} missing or incomplete under {root}", reason="case_incomplete")
    if not chosen:
        log.warning("no cases found under %s", root)
    return CaseIndex(split=split, root=root, seeds=tuple(chosen))
