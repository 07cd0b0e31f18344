"""Augmentation for the landmark model, in the TorchIO pattern: sample a record, then apply it.

Every random transform first draws its parameters into a frozen, JSON-serialisable record
(``sample_*(rng, ...) -> record``); ``apply(image, landmarks, record)`` then applies the record
deterministically to a float image in [0, 1] (1 = bone bright) *and* to the landmark coordinates
(column, row; pixel centres at integers), so the image and its targets can never drift apart. A
:class:`Compose` record holds the whole chain: store ``compose.to_dict()`` next to a training sample and
``apply(image, landmarks, Compose.from_dict(d))`` reproduces it bit for bit (noise transforms carry their
own seed). Landmarks that leave the image or are covered by a blank border / text box are flagged in
``visible``, never dropped.

Which transforms and why: docs/augmentation.md (real films: ../shared/reference/films.md).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar, Final, cast

import numpy as np
from numpy.typing import ArrayLike, NDArray

from appliance.errors import InputError
from export.datasets.aug_pixels import (
    BlurRecord,
    BorderRecord,
    ClaheRecord,
    EqualizeRecord,
    GammaRecord,
    GaussianNoiseRecord,
    GridLinesRecord,
    InvertRecord,
    JpegRecord,
    LowResolutionRecord,
    PoissonNoiseRecord,
    QuantizeRecord,
    SeamRecord,
    SigmoidRecord,
    TextBoxRecord,
    UnsharpRecord,
    WindowRecord,
    clahe,
    equalize,
)
from export.datasets.aug_records import (
    F64,
    AffineRecord,
    Augmented,
    CropRecord,
    FlipRecord,
    LetterboxRecord,
    PadRecord,
    Record,
    Shape,
    _Base,
    _clip01,
    _tuplify,
    transform_points,
    visible_in,
    warp_affine,
)

log = logging.getLogger(__name__)

__all__ = [
    "AffineRecord",
    "AugmentConfig",
    "Augmented",
    "BlurRecord",
    "BorderRecord",
    "ClaheRecord",
    "Compose",
    "CropRecord",
    "EqualizeRecord",
    "FlipRecord",
    "GammaRecord",
    "GaussianNoiseRecord",
    "GridLinesRecord",
    "InvertRecord",
    "JpegRecord",
    "LetterboxRecord",
    "LowResolutionRecord",
    "PadRecord",
    "PoissonNoiseRecord",
    "QuantizeRecord",
    "Record",
    "SeamRecord",
    "SigmoidRecord",
    "TextBoxRecord",
    "UnsharpRecord",
    "WindowRecord",
    "apply",
    "clahe",
    "compose_of",
    "crop_stage_config",
    "equalize",
    "record_from_dict",
    "sample_affine",
    "sample_augmentation",
    "sample_blur",
    "sample_border",
    "sample_clahe",
    "sample_flip",
    "sample_gamma",
    "sample_gaussian_noise",
    "sample_grid_lines",
    "sample_jpeg",
    "sample_low_resolution",
    "sample_marker",
    "sample_one_leg_crop",
    "sample_pad",
    "sample_poisson_noise",
    "sample_seam",
    "sample_sigmoid",
    "sample_text",
    "sample_unsharp",
    "sample_window",
    "transform_points",
    "visible_in",
    "warp_affine",
    "warp_mask",
]


# --- compose, serialisation, apply --------------------------------------------------------------------
@dataclass(frozen=True)
class Compose(_Base):
    """An ordered chain of records: the complete, replayable description of one augmented sample."""

    kind: ClassVar[str] = "compose"
    transforms: tuple[Record, ...] = ()

    def transform(self, s: Augmented) -> Augmented:
        for t in self.transforms:
            s = t.transform(s)
        return s

    def matrix(self, shape: Shape) -> tuple[F64, Shape]:
        m, cur = np.eye(3), (int(shape[0]), int(shape[1]))
        for t in self.transforms:
            mt, cur = t.matrix(cur)
            m = mt @ m
        return m, cur

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "transforms": [t.to_dict() for t in self.transforms]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Compose:
        rec = record_from_dict(d)
        if not isinstance(rec, Compose):
            raise InputError(f"expected a compose record, got {d.get('kind')!r}", reason="bad_augmentation")
        return rec


_RECORDS: Final[Mapping[str, type]] = MappingProxyType(
    {
        cls.kind: cls
        for cls in (
            AffineRecord,
            FlipRecord,
            CropRecord,
            PadRecord,
            LetterboxRecord,
            WindowRecord,
            GammaRecord,
            SigmoidRecord,
            InvertRecord,
            GaussianNoiseRecord,
            PoissonNoiseRecord,
            BlurRecord,
            UnsharpRecord,
            ClaheRecord,
            EqualizeRecord,
            QuantizeRecord,
            JpegRecord,
            LowResolutionRecord,
            BorderRecord,
            TextBoxRecord,
            GridLinesRecord,
            SeamRecord,
        )
    }
)


def record_from_dict(d: Mapping[str, Any]) -> Record:
    """Rebuild any record (including a :class:`Compose`) from its ``to_dict()``."""
    kind = d.get("kind")
    if kind == Compose.kind:
        return Compose(tuple(record_from_dict(t) for t in d.get("transforms", ())))
    cls = _RECORDS.get(str(kind))
    if cls is None:
        raise InputError(f"unknown augmentation record kind {kind!r}", reason="bad_augmentation")
    fields = {f.name for f in dataclasses.fields(cls)}
    body = {k: v for k, v in d.items() if k != "kind"}
    if not set(body) <= fields:
        raise InputError(
            f"{cls.__name__}: unknown fields {sorted(set(body) - fields)}", reason="bad_augmentation"
        )
    return cast(Record, cls(**{k: _tuplify(v) for k, v in body.items()}))


def apply(
    image: ArrayLike, landmarks: ArrayLike, record: Record, visible: ArrayLike | None = None
) -> Augmented:
    """Apply ``record`` to a float image in [0, 1] and its (N, 2) (col, row) landmarks.

    ``visible`` (default: inside the image) is and-ed with what the transforms leave visible.
    Deterministic: the same inputs and record give bit-identical outputs."""
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 2:
        raise InputError(f"image must be 2D, got shape {img.shape}")
    lm = np.asarray(landmarks, dtype=np.float64).reshape(-1, 2).copy()
    vis = visible_in(lm, cast(Shape, img.shape))
    if visible is not None:
        vis &= np.asarray(visible, dtype=bool).reshape(-1)
    out = record.transform(Augmented(_clip01(img), lm, vis))
    log.debug("augmented %s -> %s with %s", img.shape, out.image.shape, record.kind)
    return out


# --- sampling -----------------------------------------------------------------------------------------
def _seed(rng: np.random.Generator) -> int:
    return int(rng.integers(0, 2**31 - 1))


def sample_affine(
    rng: np.random.Generator,
    shape: Shape,
    max_angle_deg: float = 10.0,
    scale_range: tuple[float, float] = (0.9, 1.1),
    max_shift_frac: float = 0.05,
) -> AffineRecord:
    return AffineRecord(
        angle_deg=float(rng.uniform(-max_angle_deg, max_angle_deg)),
        scale=float(np.exp(rng.uniform(np.log(scale_range[0]), np.log(scale_range[1])))),
        shift_col=float(rng.uniform(-max_shift_frac, max_shift_frac) * shape[1]),
        shift_row=float(rng.uniform(-max_shift_frac, max_shift_frac) * shape[0]),
        fill=0.0,
    )


def sample_flip(rng: np.random.Generator, p: float = 0.5) -> FlipRecord:
    return FlipRecord(horizontal=bool(rng.random() < p))


def sample_one_leg_crop(
    rng: np.random.Generator,
    shape: Shape,
    landmarks: ArrayLike,
    visible: ArrayLike | None = None,
    half_width_frac: tuple[float, float] = (0.2, 0.35),
    max_trim_frac: float = 0.03,
) -> CropRecord:
    """A "one leg per image" export: columns around the measured leg (the landmarks' mean column),
    slightly trimmed at top and bottom."""
    rows, cols = shape
    p = np.asarray(landmarks, dtype=np.float64).reshape(-1, 2)
    ok = np.all(np.isfinite(p), axis=1)
    if visible is not None:
        ok &= np.asarray(visible, dtype=bool).reshape(-1)
    centre = float(np.mean(p[ok, 0])) if ok.any() else (cols - 1) / 2.0
    centre += float(rng.uniform(-0.05, 0.05) * cols)
    half = float(rng.uniform(*half_width_frac) * cols)
    left = max(0, round(centre - half))
    right = min(cols, round(centre + half))
    top = int(rng.uniform(0.0, max_trim_frac) * rows)
    bottom = rows - int(rng.uniform(0.0, max_trim_frac) * rows)
    return CropRecord(top=top, left=left, height=max(1, bottom - top), width=max(1, right - left), fill=0.0)


def sample_pad(rng: np.random.Generator, shape: Shape, max_frac: float = 0.1) -> PadRecord:
    r, c = shape
    t, b = (int(rng.uniform(0, max_frac) * r) for _ in range(2))
    lf, rt = (int(rng.uniform(0, max_frac) * c) for _ in range(2))
    return PadRecord(top=t, bottom=b, left=lf, right=rt, value=float(rng.choice([0.0, 0.0, 1.0])))


def sample_border(rng: np.random.Generator, shape: Shape, max_frac: float = 0.08) -> BorderRecord:
    r, c = shape
    return BorderRecord(
        top=int(rng.uniform(0, max_frac) * r),
        bottom=int(rng.uniform(0, max_frac) * r),
        left=int(rng.uniform(0, max_frac) * c),
        right=int(rng.uniform(0, max_frac) * c),
        value=float(rng.choice([0.0, 0.0, 1.0])),
    )


_LABELS: Final = ("STANDING AP", "LONG LEG", "WB", "ERECT", "STITCHED", "FULL LEG", "AP", "120 cm", "PACS")


def sample_text(rng: np.random.Generator, shape: Shape, pixel_mm: float) -> TextBoxRecord:
    """Console annotation in the top or bottom margin band: capitals 3-10 mm tall (burned-in labels of
    real films; larger than the simulator's 3-7 mm because exports often rescale the overlay)."""
    r, c = shape
    h = max(5, round(float(rng.uniform(3.0, 10.0)) / pixel_mm))
    label = str(rng.choice(_LABELS))
    if rng.random() < 0.3:
        label += f"\n{int(rng.integers(60, 95))} kV"
    band = rng.uniform(0.0, 0.08) if rng.random() < 0.5 else rng.uniform(0.88, 0.97)
    return TextBoxRecord(
        text=label,
        row=int(band * r),
        col=int(rng.uniform(0.0, 0.8) * c),
        height_px=h,
        value=float(rng.uniform(0.8, 1.0)),
        boxed=bool(rng.random() < 0.4),
    )


def sample_marker(rng: np.random.Generator, shape: Shape, pixel_mm: float) -> TextBoxRecord:
    """A lead L/R side marker (8-20 mm letters, as in the simulator): bold, bright, near the top."""
    r, c = shape
    return TextBoxRecord(
        text=str(rng.choice(["L", "R", "LT", "RT"])),
        row=int(rng.uniform(0.0, 0.2) * r),
        col=int(rng.uniform(0.0, 0.9) * c),
        height_px=max(5, round(float(rng.uniform(8.0, 20.0)) / pixel_mm)),
        value=1.0,
        boxed=False,
        bold=True,
    )


def sample_grid_lines(rng: np.random.Generator) -> GridLinesRecord:
    return GridLinesRecord(
        period_px=float(rng.uniform(2.2, 8.0)),
        vertical=bool(rng.random() < 0.7),
        amplitude=float(rng.uniform(0.02, 0.08)),
        phase=float(rng.uniform(0.0, 2 * np.pi)),
    )


def sample_seam(rng: np.random.Generator, shape: Shape) -> SeamRecord:
    rows = shape[0]
    n = int(rng.choice([2, 3]))
    seams = tuple(int(rows * (k / n + rng.uniform(-0.05, 0.05))) for k in range(1, n))
    return SeamRecord(
        seam_rows=seams,
        gains=tuple(float(np.exp(rng.normal(0.0, 0.06))) for _ in range(n)),
        offsets=tuple(float(rng.normal(0.0, 0.03)) for _ in range(n)),
        line_px=int(rng.integers(1, 4)),
        line_gain=float(rng.uniform(0.8, 1.25)),
    )


def sample_window(rng: np.random.Generator) -> WindowRecord:
    return WindowRecord(low=float(rng.uniform(-0.1, 0.15)), high=float(rng.uniform(0.85, 1.1)))


def sample_gamma(rng: np.random.Generator, lo: float = 0.6, hi: float = 1.6) -> GammaRecord:
    return GammaRecord(gamma=float(np.exp(rng.uniform(np.log(lo), np.log(hi)))))


def sample_sigmoid(rng: np.random.Generator) -> SigmoidRecord:
    return SigmoidRecord(slope=float(rng.uniform(2.0, 8.0)), centre=float(rng.uniform(0.35, 0.65)))


def sample_gaussian_noise(rng: np.random.Generator, max_sigma: float = 0.04) -> GaussianNoiseRecord:
    return GaussianNoiseRecord(sigma=float(rng.uniform(0.003, max_sigma)), seed=_seed(rng))


def sample_poisson_noise(rng: np.random.Generator) -> PoissonNoiseRecord:
    return PoissonNoiseRecord(
        photons=float(np.exp(rng.uniform(np.log(300.0), np.log(30000.0)))),
        attenuation=float(rng.uniform(2.0, 4.0)),
        seed=_seed(rng),
    )


def sample_blur(rng: np.random.Generator, max_sigma_px: float = 1.5) -> BlurRecord:
    return BlurRecord(sigma_px=float(rng.uniform(0.3, max_sigma_px)))


def sample_unsharp(rng: np.random.Generator) -> UnsharpRecord:
    return UnsharpRecord(sigma_px=float(rng.uniform(1.0, 4.0)), amount=float(rng.uniform(0.2, 1.5)))


def sample_clahe(rng: np.random.Generator) -> ClaheRecord:
    t = int(rng.integers(4, 13))
    return ClaheRecord(
        tiles_rows=t, tiles_cols=max(2, t // 2), clip_limit=float(rng.uniform(1.5, 4.0)), bins=256
    )


def sample_jpeg(rng: np.random.Generator) -> JpegRecord:
    return JpegRecord(quality=int(rng.integers(40, 96)))


def sample_low_resolution(
    rng: np.random.Generator, pixel_mm: float, target_mm: tuple[float, float] = (1.0, 2.0)
) -> LowResolutionRecord:
    """Export resolution of 1-2 mm per pixel (issue 4, films.md) for an image at ``pixel_mm``."""
    return LowResolutionRecord(factor=max(1.0, float(rng.uniform(*target_mm)) / pixel_mm))


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities of each transform in :func:`sample_augmentation` (ranges: the ``sample_*``)."""

    p_affine: float = 0.8
    max_angle_deg: float = 10.0
    p_flip: float = 0.5
    p_seam: float = 0.3
    p_grid: float = 0.15
    p_border: float = 0.3
    max_texts: int = 3
    p_marker: float = 0.5
    p_blur: float = 0.3
    p_gaussian_noise: float = 0.4
    p_poisson_noise: float = 0.3
    p_unsharp: float = 0.3
    p_window: float = 0.5
    p_gamma: float = 0.5
    p_sigmoid: float = 0.3
    p_one_leg_crop: float = 0.3  # whole films; crop_stage_config() turns it off
    p_pad: float = 0.2
    p_clahe: float = 0.3
    p_equalize: float = 0.1
    p_low_resolution: float = 0.4
    p_invert: float = 0.05
    p_quantize: float = 0.5
    p_jpeg: float = 0.3


def crop_stage_config() -> AugmentConfig:
    """The preset for high-resolution joint crops: no one-leg crop (the crop already holds one joint),
    less padding, fewer texts and markers (at 0.5 mm/px a marker fills a quarter of the crop, and
    annotations sit in the film's margins, rarely over a joint); everything else as for whole films."""
    return dataclasses.replace(AugmentConfig(), p_one_leg_crop=0.0, p_pad=0.1, max_texts=1, p_marker=0.2)


def sample_augmentation(
    rng: np.random.Generator,
    shape: Shape,
    landmarks: ArrayLike,
    *,
    pixel_mm: float,
    config: AugmentConfig | None = None,
    out_shape: Shape | None = None,
) -> Compose:
    """Sample one chain in the order things happen to a real film: patient pose on the detector
    (rotation/scale/shift, mirror), film artefacts (seams, grid, shutter, text, markers), detector and
    console (blur, noise, edge enhancement, window and tone curves), then export (one-leg crop, padding,
    equalisation, low resolution, inversion, 8-bit, JPEG) and finally a letterbox to ``out_shape``."""
    cfg = config or AugmentConfig()
    cur: Shape = (int(shape[0]), int(shape[1]))
    pts = np.asarray(landmarks, dtype=np.float64).reshape(-1, 2)
    ts: list[Record] = []

    def add(t: Record) -> None:
        nonlocal cur, pts
        m, cur = t.matrix(cur)
        pts = transform_points(m, pts)
        ts.append(t)

    if rng.random() < cfg.p_affine:
        add(sample_affine(rng, cur, cfg.max_angle_deg))
    if rng.random() < cfg.p_flip:
        add(FlipRecord(True))
    if rng.random() < cfg.p_seam:
        add(sample_seam(rng, cur))
    if rng.random() < cfg.p_grid:
        add(sample_grid_lines(rng))
    if rng.random() < cfg.p_border:
        add(sample_border(rng, cur))
    for _ in range(int(rng.integers(0, cfg.max_texts + 1))):
        add(sample_text(rng, cur, pixel_mm))
    if rng.random() < cfg.p_marker:
        add(sample_marker(rng, cur, pixel_mm))
    if rng.random() < cfg.p_blur:
        add(sample_blur(rng))
    if rng.random() < cfg.p_gaussian_noise:
        add(sample_gaussian_noise(rng))
    if rng.random() < cfg.p_poisson_noise:
        add(sample_poisson_noise(rng))
    if rng.random() < cfg.p_unsharp:
        add(sample_unsharp(rng))
    if rng.random() < cfg.p_window:
        add(sample_window(rng))
    if rng.random() < cfg.p_gamma:
        add(sample_gamma(rng))
    if rng.random() < cfg.p_sigmoid:
        add(sample_sigmoid(rng))
    if rng.random() < cfg.p_one_leg_crop:
        add(sample_one_leg_crop(rng, cur, pts, visible_in(pts, cur)))
    if rng.random() < cfg.p_pad:
        add(sample_pad(rng, cur))
    if rng.random() < cfg.p_clahe:
        add(sample_clahe(rng))
    elif rng.random() < cfg.p_equalize:
        add(EqualizeRecord())
    if rng.random() < cfg.p_low_resolution:
        low = sample_low_resolution(rng, pixel_mm)
        if low.factor > 1.05:  # already as coarse as an export: nothing to do
            add(low)
    if rng.random() < cfg.p_invert:
        add(InvertRecord())
    if rng.random() < cfg.p_quantize:
        add(QuantizeRecord(8))
    if rng.random() < cfg.p_jpeg:
        add(sample_jpeg(rng))
    if out_shape is not None and cur != (int(out_shape[0]), int(out_shape[1])):
        add(LetterboxRecord(int(out_shape[0]), int(out_shape[1])))
    return Compose(tuple(ts))


def warp_mask(mask: ArrayLike, record: Record) -> NDArray[np.bool_]:
    """A label mask (e.g. a projected bone mask) through the geometry of ``record``: nearest-neighbour
    resampling with the record's total (col, row) affine; pixel-value transforms do not touch it."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise InputError(f"mask must be 2D, got shape {m.shape}")
    mat, out_shape = record.matrix(cast(Shape, m.shape))
    out = warp_affine(m.astype(np.float32), mat, out_shape, fill=0.0, order=0, antialias=False)
    return np.asarray(out > 0.5, dtype=np.bool_)


def compose_of(records: Sequence[Record]) -> Compose:
    """A :class:`Compose` of ``records`` (flattening nested ones)."""
    flat: list[Record] = []
    for r in records:
        flat.extend(r.transforms if isinstance(r, Compose) else (r,))
    return Compose(tuple(flat))
