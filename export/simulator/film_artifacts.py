"""Real-film artefacts of long-leg and knee radiographs, each sampled into a record and applied
deterministically (the TorchIO pattern: ``sample_artifacts`` -> ``FilmArtifacts`` record ->
``render_with_artifacts``).

Physical objects act where they physically act:
* ruler graduations, printed ruler numbers and lead L/R markers are added to the path-length images
  (CoCr-equivalent metal, plastic as water), so they are blurred, scattered and noisy like anatomy;
* collimator blades and a stationary grid's strip shadows modulate the incident primary fluence;
* stitched exposures differ in gain, leave a seam line and a small registration offset;
* console-side things come after processing: electronic shutters, burned-in text, padding bars.

See films.md in the shared reference for what real films show. Ranges cite their sources inline.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from appliance.errors import GeometryError, InputError
from appliance.geometry.projection import ProjectionGeometry
from export.simulator.film_text import (
    PaddingRecord,
    TextRecord,
    burn_text,
    pad_image,
    paste_add,
    text_mask,
)
from export.simulator.physics import (
    ExposureParams,
    Film,
    encode_film,
    log_normalise,
    process_display,
    sample_exposure,
    simulate_detector,
    smooth,
)

log = logging.getLogger(__name__)

F32 = NDArray[np.float32]
# Iron (steel ball) expressed in the CoCr metal basis: both use the Fe attenuation table, so only the
# density ratio matters (steel 7.87 g/cm^3 vs CoCr 8.3 g/cm^3, ASTM F75).
STEEL_IN_COCR_BASIS = 7.87 / 8.3
# Lead expressed as CoCr-equivalent thickness: mu(Pb)/mu(CoCr) ~ 5-6 at 50-70 keV (NIST: Pb 8.04 / 5.02
# cm^2/g at 50/60 keV x 11.35 g/cm^3 vs Fe 1.96 / 1.21 x 8.3).
LEAD_IN_COCR = 5.5


# --- records -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StitchRecord:
    seam_rows: tuple[int, ...]  # first row of each zone after the first
    zone_gains: tuple[float, ...]  # one per zone
    zone_shifts: tuple[tuple[int, int], ...]  # (drow, dcol) registration error per zone, zone 0 = (0, 0)
    seam_width_px: int
    seam_gain: float


@dataclass(frozen=True)
class CollimationRecord:
    top: float  # blade positions as fractions of the film height / width, inward from each edge
    bottom: float
    left: float
    right: float
    angle_deg: float
    blade_transmission: float
    penumbra_mm: float
    shutter: str  # "none" | "black" | "white": the console's electronic shutter outside the field


@dataclass(frozen=True)
class RulerRecord:
    col: int  # left edge of the ruler body
    row_start: int
    row_end: int
    tick_spacing_px: float  # 10 mm x magnification / pitch
    width_px: int
    tick_px: int  # graduation line thickness
    metal_mm: float  # CoCr-equivalent thickness of the printed graduations
    plastic_mm: float  # water-equivalent thickness of the ruler body
    first_cm: int
    descending: bool
    number_height_px: int


@dataclass(frozen=True)
class MarkerRecord:
    text: str
    row: int
    col: int
    height_px: int
    metal_mm: float


@dataclass(frozen=True)
class GridRecord:
    lines_per_mm: float
    vertical: bool  # strips run along the columns (lines vary with column index)
    amplitude: float
    phase: float


_PARTS: dict[str, type] = {
    "stitch": StitchRecord,
    "collimation": CollimationRecord,
    "ruler": RulerRecord,
    "grid": GridRecord,
    "padding": PaddingRecord,
}


def _tuplify(x: Any) -> Any:
    return tuple(_tuplify(v) for v in x) if isinstance(x, list | tuple) else x


def _record(cls: type, d: Mapping[str, Any]) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    if set(d) != names:
        raise InputError(f"{cls.__name__} fields differ: got {sorted(d)}, want {sorted(names)}")
    return cls(**{k: _tuplify(v) for k, v in d.items()})


@dataclass(frozen=True)
class FilmArtifacts:
    """Every artefact of one film; absent ones are None / empty. JSON-serialisable."""

    stitch: StitchRecord | None = None
    collimation: CollimationRecord | None = None
    ruler: RulerRecord | None = None
    markers: tuple[MarkerRecord, ...] = ()
    grid: GridRecord | None = None
    texts: tuple[TextRecord, ...] = ()
    padding: PaddingRecord | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FilmArtifacts:
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise InputError(f"unknown artefact fields {sorted(unknown)}")
        kw: dict[str, Any] = {}
        for name, part in _PARTS.items():
            v = d.get(name)
            kw[name] = None if v is None else _record(part, v)
        kw["markers"] = tuple(_record(MarkerRecord, m) for m in d.get("markers", ()))
        kw["texts"] = tuple(_record(TextRecord, t) for t in d.get("texts", ()))
        return cls(**kw)

    def pixel_offset(self) -> tuple[int, int]:
        """(dcol, drow) to add to landmark pixel coordinates: padding shifts the image content."""
        return (0, 0) if self.padding is None else (self.padding.left, self.padding.top)


# --- sampling ------------------------------------------------------------------------------------------
_LABELS = (
    "STANDING AP",
    "LONG LEG AP",
    "BILATERAL STANDING",
    "WB",
    "KNEE AP",
    "KNEE LAT",
    "ERECT",
    "RADIOLOGY",
    "PORTABLE",
    "STITCHED",
    "FULL LEG",
    "L",  # electronic side markers stand in for (or duplicate) lead ones
    "R",
)


def _mm(mm: float, pitch: float, lo: int = 1) -> int:
    return max(lo, round(mm / pitch))


def sample_artifacts(
    rng: np.random.Generator,
    kind: str,
    rows: int,
    cols: int,
    pitch_mm: float,
    exposure: ExposureParams,
    leg_side: str | None = None,
) -> FilmArtifacts:
    """Sample which artefacts a film of ``kind`` shows and how (long-leg films show far more)."""
    longleg = kind == "longleg"
    stitch = None
    if longleg and rng.random() < 0.8:
        # Two or three detector positions or cassettes (films.md); steps of a few percent between
        # exposures and registration errors of ~1-2 mm are typical of stitched DR/CR (Gooßen et al.,
        # "Automatic stitching of radiographs", SPIE 6914, 2008).
        n = int(rng.choice([2, 3]))
        seams = tuple(int(rows * (k / n + rng.uniform(-0.04, 0.04))) for k in range(1, n))
        stitch = StitchRecord(
            seam_rows=seams,
            zone_gains=tuple(float(np.exp(rng.normal(0.0, 0.05))) for _ in range(n)),
            zone_shifts=(
                (0, 0),
                *(
                    (round(rng.uniform(-1.5, 1.5) / pitch_mm), round(rng.uniform(-1.5, 1.5) / pitch_mm))
                    for _ in range(n - 1)
                ),
            ),
            seam_width_px=_mm(rng.uniform(0.3, 1.5), pitch_mm),
            seam_gain=float(rng.uniform(0.8, 1.25)),
        )
    collimation = None
    if rng.random() < 0.9:
        side = (0.02, 0.25) if longleg else (0.03, 0.2)
        tb = (0.0, 0.04) if longleg else (0.03, 0.2)
        collimation = CollimationRecord(
            top=float(rng.uniform(*tb)),
            bottom=float(rng.uniform(*tb)),
            left=float(rng.uniform(*side)),
            right=float(rng.uniform(*side)),
            angle_deg=float(rng.uniform(-1.5, 1.5)),
            # 2-3 mm lead blades pass < 1e-4 at 90 kVp (NIST Pb mu/rho); leakage and off-focal radiation
            # leave ~0.1-1 % (IEC 60601-1-3 leakage limits; Bushberg et al., ch. 6).
            blade_transmission=float(rng.uniform(0.001, 0.01)),
            penumbra_mm=float(rng.uniform(0.5, 3.0)),
            shutter=str(rng.choice(["none", "none", "black", "white"])),
        )
    # Physical objects must lie inside the exposed field to show; place them relative to its edges.
    f_left = 0.0 if collimation is None else collimation.left + 0.02
    f_right = 1.0 if collimation is None else 1.0 - collimation.right - 0.02
    f_top = 0.0 if collimation is None else collimation.top + 0.02
    ruler = None
    if rng.random() < (0.8 if longleg else 0.15):
        on_left = rng.random() < 0.5
        width_mm = float(rng.uniform(25.0, 40.0))
        body = width_mm / (cols * pitch_mm)  # ruler width as a fraction of the film width
        frac = (
            rng.uniform(f_left, f_left + 0.08)
            if on_left
            else rng.uniform(max(f_left, f_right - 0.08 - body), max(f_left, f_right - body))
        )
        mag = rng.uniform(1.0, 1.15)  # ruler between the legs' plane and the detector
        r0 = int(rows * rng.uniform(0.0, 0.05))
        ruler = RulerRecord(
            col=int(cols * frac),
            row_start=r0,
            row_end=int(rows * rng.uniform(0.95, 1.0)),
            tick_spacing_px=10.0 * mag / pitch_mm,
            width_px=_mm(width_mm, pitch_mm, 4),
            tick_px=_mm(rng.uniform(0.4, 1.0), pitch_mm),
            metal_mm=float(rng.uniform(0.5, 1.5)),
            plastic_mm=float(rng.uniform(2.0, 5.0)),
            first_cm=int(rng.integers(0, 20)),
            descending=bool(rng.random() < 0.3),
            number_height_px=_mm(rng.uniform(5.0, 9.0), pitch_mm, 4),
        )
    markers: list[MarkerRecord] = []
    if rng.random() < 0.95:
        # The technologist's lead marker names the imaged side; ~3 % carry the other letter (a known
        # error source that a model must not trust blindly).
        letter = {"left": "L", "right": "R"}.get(leg_side or "", str(rng.choice(["L", "R"])))
        if rng.random() < 0.03:
            letter = "R" if letter == "L" else "L"
        text = letter + ("T" if rng.random() < 0.5 else "")
        h = _mm(rng.uniform(8.0, 20.0), pitch_mm, 5)
        markers.append(
            MarkerRecord(
                text=text,
                row=int(rows * rng.uniform(f_top + 0.01, f_top + 0.1)),
                col=int(
                    cols
                    * (
                        rng.uniform(f_left, f_left + 0.1)
                        if rng.random() < 0.5
                        else rng.uniform(max(f_left, f_right - 0.15), max(f_left, f_right - 0.08))
                    )
                ),
                height_px=h,
                metal_mm=float(LEAD_IN_COCR * rng.uniform(0.5, 1.5)),  # 0.5-1.5 mm lead letters
            )
        )
    grid = None
    if exposure.grid and rng.random() < 0.4:
        # Stationary grids: 30-80 lines/cm (Bushberg et al., ch. 7); their shadow aliases on the pixels.
        grid = GridRecord(
            lines_per_mm=float(rng.uniform(3.0, 8.0)),
            vertical=bool(rng.random() < 0.7),
            amplitude=float(rng.uniform(0.01, 0.05)),
            phase=float(rng.uniform(0.0, 2 * np.pi)),
        )
    texts: list[TextRecord] = []
    for _ in range(int(rng.integers(0, 4))):
        label = str(rng.choice(_LABELS))
        if rng.random() < 0.4:
            label += f"\n{int(exposure.kvp)} kV  {rng.uniform(2, 40):.1f} mAs"
        h = _mm(rng.uniform(3.0, 7.0), pitch_mm, 5)
        texts.append(
            TextRecord(
                text=label,
                row=int(rows * float(rng.choice([rng.uniform(0.01, 0.06), rng.uniform(0.9, 0.97)]))),
                col=int(cols * float(rng.choice([rng.uniform(0.01, 0.08), rng.uniform(0.55, 0.7)]))),
                height_px=h,
                value=float(rng.uniform(0.85, 1.0)),
                boxed=bool(rng.random() < 0.3),
            )
        )
    padding = None
    if rng.random() < 0.2:
        lr = rng.random() < 0.7
        a, b = (int(cols * rng.uniform(0.0, 0.15)) for _ in range(2))
        padding = PaddingRecord(
            top=0 if lr else a,
            bottom=0 if lr else b,
            left=a if lr else 0,
            right=b if lr else 0,
            value=float(rng.choice([0.0, 1.0])),
        )
    return FilmArtifacts(stitch, collimation, ruler, tuple(markers), grid, tuple(texts), padding)


# --- path-stage artefacts --------------------------------------------------------------------------------
def _ruler_paths(water: F32, metal: F32, r: RulerRecord) -> None:
    c0, c1 = r.col, r.col + r.width_px
    water[r.row_start : r.row_end, max(c0, 0) : max(c1, 0)] += r.plastic_mm
    n_ticks = int((r.row_end - r.row_start) / r.tick_spacing_px) + 1
    for k in range(n_ticks):
        row = round(r.row_start + k * r.tick_spacing_px)
        cm = r.first_cm + (n_ticks - 1 - k if r.descending else k)
        long = cm % 10 == 0
        length = r.width_px // 2 if long else (r.width_px // 3 if cm % 5 == 0 else r.width_px // 6)
        metal[row : row + r.tick_px, max(c0, 0) : max(c0 + length, 0)] += r.metal_mm
        if long:
            mask = text_mask(str(cm), r.number_height_px, bold=True)
            paste_add(metal, mask, row - mask.shape[0] // 2, c0 + length + r.tick_px * 2, r.metal_mm)


def apply_path_artifacts(paths_mm: NDArray[Any], art: FilmArtifacts) -> F32:
    """Return a copy of the (water, bone, metal) path images with ruler and markers added."""
    out = np.array(paths_mm, dtype=np.float32, copy=True)
    if art.ruler is not None:
        _ruler_paths(out[0], out[2], art.ruler)
    for m in art.markers:
        mask = text_mask(m.text, m.height_px, bold=True)
        pad = max(2, m.height_px // 4)
        # The letters sit in a small plastic holder (~5 mm acrylic, water-equivalent).
        holder = np.ones((mask.shape[0] + 2 * pad, mask.shape[1] + 2 * pad), np.float32)
        paste_add(out[0], holder, m.row - pad, m.col - pad, 5.0)
        paste_add(out[2], mask, m.row, m.col, m.metal_mm)
    return out


# --- fluence and detector artefacts ------------------------------------------------------------------
def field_mask(shape: tuple[int, int], pitch_mm: float, c: CollimationRecord) -> F32:
    """Open-field fraction per pixel: 1 inside the (slightly rotated) collimated field, the blade
    transmission outside, with a Gaussian penumbra from the focal spot size."""
    rows, cols = shape
    rr = np.arange(rows, dtype=np.float32)[:, None] - (rows - 1) / 2.0
    cc = np.arange(cols, dtype=np.float32)[None, :] - (cols - 1) / 2.0
    a = np.deg2rad(c.angle_deg)
    u = np.float32(np.cos(a)) * cc + np.float32(np.sin(a)) * rr
    v = -np.float32(np.sin(a)) * cc + np.float32(np.cos(a)) * rr
    inside = (
        (u >= -cols / 2.0 + c.left * cols)
        & (u <= cols / 2.0 - c.right * cols)
        & (v >= -rows / 2.0 + c.top * rows)
        & (v <= rows / 2.0 - c.bottom * rows)
    )
    m = np.where(inside, np.float32(1.0), np.float32(c.blade_transmission))
    return smooth(m, c.penumbra_mm / pitch_mm)


def grid_profile(n: int, pitch_mm: float, g: GridRecord) -> F32:
    """Pixel-averaged transmission of the grid strips' shadow: the pixel aperture integrates the
    cosine (a sinc factor) and the sampling aliases it into the coarse moire real films show."""
    x = np.arange(n, dtype=np.float64) * pitch_mm
    f = g.lines_per_mm
    mod = np.cos(2 * np.pi * f * x + g.phase) * np.sinc(f * pitch_mm)
    return (1.0 - g.amplitude * (0.5 + 0.5 * mod)).astype(np.float32)


def zone_rows(rows: int, s: StitchRecord) -> list[tuple[int, int]]:
    bounds = [0, *sorted(s.seam_rows), rows]
    return list(itertools.pairwise(bounds))


def stitch_gain(rows: int, s: StitchRecord) -> F32:
    """Per-row gain (rows, 1): one level per exposure and a thin seam line where plates overlap."""
    g = np.ones(rows, np.float32)
    for (a, b), gain in zip(zone_rows(rows, s), s.zone_gains, strict=True):
        g[a:b] = gain
    for seam in s.seam_rows:
        lo = max(0, seam - s.seam_width_px // 2)
        g[lo : lo + s.seam_width_px] *= s.seam_gain
    return g[:, None]


def shift_zones(img: F32, s: StitchRecord) -> F32:
    """Displace each zone's content by its registration error (edge rows/cols repeat)."""
    out = img.copy()
    rows, cols = img.shape
    for (a, b), (dr, dc) in zip(zone_rows(rows, s), s.zone_shifts, strict=True):
        if dr == 0 and dc == 0:
            continue
        src_r = np.clip(np.arange(a, b) - dr, 0, rows - 1)
        src_c = np.clip(np.arange(cols) - dc, 0, cols - 1)
        out[a:b] = img[np.ix_(src_r, src_c)]
    return out


def shift_points(points: NDArray[Any], rows: int, s: StitchRecord) -> NDArray[Any]:
    """Where :func:`shift_zones` puts image points: (N, 2) (col, row) of the unshifted film (rows
    ``rows``, no padding) -> the same anatomy on the shifted film. A point moves with the zone it lands
    in (content at row r of a zone came from row r - drow)."""
    pts = np.array(points, dtype=np.float64, copy=True).reshape(-1, 2)
    zones = zone_rows(rows, s)
    for i, (col, row) in enumerate(pts):
        for (a, b), (dr, dc) in zip(zones, s.zone_shifts, strict=True):
            if a - 0.5 <= row + dr < b - 0.5:
                pts[i] = (col + dc, row + dr)
                break
    return pts


# --- display-stage artefacts ---------------------------------------------------------------------------
def apply_display_artifacts(bright: F32, field: F32 | None, art: FilmArtifacts) -> F32:
    """Electronic shutter, burned-in text and padding bars, on the processed brightness (1 = white)."""
    out = bright.copy()
    c = art.collimation
    if c is not None and field is not None and c.shutter != "none":
        value = np.float32(0.0 if c.shutter == "black" else 1.0)
        out = np.where(field < 0.5, value, out).astype(np.float32)
    for t in art.texts:
        burn_text(out, t)
    return out if art.padding is None else pad_image(out, art.padding)


def render_with_artifacts(
    paths_mm: NDArray[Any], pitch_mm: float, exposure: ExposureParams, art: FilmArtifacts, seed: int
) -> Film:
    """``render_film`` plus every artefact in ``art``; deterministic in all four inputs and ``seed``.

    With padding the film is larger than the path images: shift landmarks by ``art.pixel_offset()``."""
    paths = apply_path_artifacts(paths_mm, art)
    rows, cols = paths.shape[1:]
    field = None if art.collimation is None else field_mask((rows, cols), pitch_mm, art.collimation)
    primary: F32 | None = field
    if art.grid is not None:
        n = cols if art.grid.vertical else rows
        prof = grid_profile(n, pitch_mm, art.grid)
        prof2 = prof[None, :] if art.grid.vertical else prof[:, None]
        primary = prof2 * (np.float32(1.0) if primary is None else primary)
    detector = None if art.stitch is None else stitch_gain(rows, art.stitch)
    rng = np.random.default_rng(seed)
    raw = simulate_detector(paths, pitch_mm, exposure, rng, primary_gain=primary, exposure_gain=detector)
    del paths
    log_img = log_normalise(raw)
    if art.stitch is not None:
        log_img = shift_zones(log_img, art.stitch)
    roi = None if field is None else field > 0.5
    bright = process_display(log_img, pitch_mm, exposure, roi=roi)
    bright = apply_display_artifacts(bright, field, art)
    return encode_film(bright, pitch_mm, exposure)


@dataclass(frozen=True)
class FilmRecipe:
    """Everything that turns path images into one film: store it as JSON next to the film to replay it."""

    exposure: ExposureParams
    artifacts: FilmArtifacts
    seed: int

    def to_dict(self) -> dict[str, Any]:
        return {"exposure": self.exposure.to_dict(), "artifacts": self.artifacts.to_dict(), "seed": self.seed}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FilmRecipe:
        try:
            return cls(
                ExposureParams.from_dict(d["exposure"]),
                FilmArtifacts.from_dict(d["artifacts"]),
                int(d["seed"]),
            )
        except (KeyError, TypeError) as exc:
            raise InputError(f"incomplete film recipe: {exc}") from exc


def sample_recipe(rng: np.random.Generator, kind: str, rows: int, cols: int, pitch_mm: float) -> FilmRecipe:
    """Sample exposure, artefacts and a noise seed for a film of ``kind`` and size."""
    exposure = sample_exposure(rng, kind)
    art = sample_artifacts(rng, kind, rows, cols, pitch_mm, exposure)
    return FilmRecipe(exposure, art, int(rng.integers(0, 2**31 - 1)))


def render_recipe(paths_mm: NDArray[Any], pitch_mm: float, recipe: FilmRecipe) -> Film:
    return render_with_artifacts(paths_mm, pitch_mm, recipe.exposure, recipe.artifacts, recipe.seed)


def padded_geometry(geometry: ProjectionGeometry, padding: PaddingRecord | None) -> ProjectionGeometry:
    """The projection geometry of a padded film: same rays, pixel (0, 0) moved ``left``/``top`` pixels
    outward and the detector enlarged, so points project onto the padded pixels (for DICOM writing)."""
    if padding is None:
        return geometry
    origin = geometry.pixel_to_mm(-padding.left, -padding.top)
    return dataclasses.replace(
        geometry,
        detector_origin_mm=(float(origin[0]), float(origin[1]), float(origin[2])),
        columns=geometry.columns + padding.left + padding.right,
        rows=geometry.rows + padding.top + padding.bottom,
    )


# --- calibration sphere --------------------------------------------------------------------------------
def sphere_chord_mm(geometry: ProjectionGeometry, centre_mm: ArrayLike, radius_mm: float) -> F32:
    """Exact chord length (mm) of every pixel's central ray through a sphere, shape (rows, cols).

    The ray from the source to the pixel centre misses the sphere when its distance d to the centre
    exceeds r; otherwise the chord is 2 sqrt(r^2 - d^2). Only the sphere's projected bounding box is
    evaluated (the projection of the circumscribed cube contains the sphere's shadow)."""
    c = np.asarray(centre_mm, dtype=np.float64).reshape(3)
    if radius_mm <= 0:
        raise GeometryError("sphere radius must be positive")
    out = np.zeros((geometry.rows, geometry.columns), np.float32)
    corners = c + radius_mm * np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)])
    px = geometry.project(corners)  # raises if the sphere is not in front of the source
    c0 = max(0, int(np.floor(px[:, 0].min())) - 1)
    c1 = min(geometry.columns, int(np.ceil(px[:, 0].max())) + 2)
    r0 = max(0, int(np.floor(px[:, 1].min())) - 1)
    r1 = min(geometry.rows, int(np.ceil(px[:, 1].max())) + 2)
    if c1 <= c0 or r1 <= r0:
        return out
    cols_g, rows_g = np.meshgrid(np.arange(c0, c1), np.arange(r0, r1))
    d = geometry.pixel_to_mm(cols_g, rows_g) - geometry.source
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    v = c - geometry.source
    t = d @ v
    dist2 = float(v @ v) - t * t
    chord = 2.0 * np.sqrt(np.clip(radius_mm**2 - dist2, 0.0, None))
    out[r0:r1, c0:c1] = np.where(t > 0, chord, 0.0)
    return out


def steel_ball_metal_path(
    geometry: ProjectionGeometry, centre_mm: Sequence[float], diameter_mm: float = 25.0
) -> F32:
    """Metal-basis (CoCr-equivalent) path image of a steel calibration ball (typically 25 mm)."""
    return (sphere_chord_mm(geometry, centre_mm, diameter_mm / 2.0) * np.float32(STEEL_IN_COCR_BASIS)).astype(
        np.float32
    )
