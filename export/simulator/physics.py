"""Radiograph image formation: path-length images -> a processed, stored film.

Chain (each step mirrors a physical or console stage, every random choice lives in ``ExposureParams``):

1. primary: polychromatic Beer-Lambert, summed exactly over the spectrum's energy bins, weighted by the
   energy-integrating CsI response (signal ~ N E eta, variance ~ N E^2 eta);
2. heel effect and any caller gain (collimation, grid shadow) on the incident fluence;
3. scatter: a broad kernel over a source proportional to primary x electron-density thickness, scaled to
   a sampled scatter-to-primary ratio (SPR) at a reference thickness;
4. quantum noise (compound Poisson through an equivalent quanta count), detector blur (Gaussian core plus
   a long CsI tail), electronic noise;
5. console processing: log, latitude (percentile) normalisation, dynamic range compression, two-band
   unsharp-mask enhancement, a sigmoid tone curve, gamma, quantisation, MONOCHROME1/2 and a VOI window.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from appliance.errors import InputError
from export.simulator.spectra import (
    BASIS,
    INHERENT_FILTRATION_MM_AL,
    detector_weights,
    hu_to_basis,
    mu_per_mm,
    tungsten_spectrum,
)

log = logging.getLogger(__name__)

__all__ = [
    "KINDS",
    "ExposureParams",
    "Film",
    "RawExposure",
    "encode_film",
    "expected_signal",
    "hu_to_basis",
    "log_normalise",
    "presentation_of",
    "process_display",
    "render_film",
    "sample_exposure",
    "simulate_detector",
]

F32 = NDArray[np.float32]
KINDS = ("longleg", "knee_ap", "knee_lat")
PHOTOMETRICS = ("MONOCHROME1", "MONOCHROME2")
# Electron density of each basis relative to water: rho * (Z/A) / (Z/A)_water with Z/A from NIST ESTAR
# (water 0.5551, ICRU cortical bone 0.5148, iron 0.4656). Compton scatter scales with electron density.
ELECTRON_DENSITY_REL = (1.0, 1.92 * 0.5148 / 0.5551, 8.3 * 0.4656 / 0.5551)
_CHUNK_PIXELS = 1 << 21


@dataclass(frozen=True)
class ExposureParams:
    """Every sampled choice behind one film; JSON-serialisable, replayed exactly by ``render_film``."""

    kind: str
    kvp: float
    filtration_mm_al: float  # total (inherent + added)
    sid_mm: float
    fluence_per_mm2: float  # open-beam photons per mm^2 at the detector, field centre
    csi_mm: float
    grid: bool
    spr: float  # scatter-to-primary ratio behind ``spr_reference_mm`` of water
    spr_reference_mm: float
    scatter_sigma_mm: float
    blur_sigma_mm: float
    blur_tail_fraction: float
    blur_tail_sigma_mm: float
    electronic_noise_quanta: float  # rms, in units of one mean absorbed quantum
    line_noise_quanta: float  # rms of row- and column-correlated read-out offsets
    heel_strength: float  # fractional fluence loss at the anode edge of the field
    heel_anode_top: bool  # anode toward row 0
    flat_field_corrected: bool  # DR gain calibration removes the cos^3 fall-off; CR keeps it
    latitude_low_pct: float
    latitude_high_pct: float
    drc_strength: float
    drc_sigma_mm: float
    drc_pivot: float
    fine_gain: float
    fine_sigma_mm: float
    mid_gain: float
    mid_sigma_mm: float
    tone_slope: float
    gamma: float
    bits_stored: int
    photometric: str
    window_width_frac: float
    window_center_shift: float
    spectrum_bin_kev: float = 2.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InputError(f"unknown film kind {self.kind!r}")
        if self.photometric not in PHOTOMETRICS:
            raise InputError(f"photometric must be one of {PHOTOMETRICS}")
        if not 8 <= self.bits_stored <= 16:
            raise InputError("bits_stored must be 8..16")
        if self.fluence_per_mm2 <= 0 or self.kvp <= 0:
            raise InputError("fluence and kVp must be positive")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ExposureParams:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise InputError(f"unknown exposure fields {sorted(unknown)}")
        return cls(**dict(d))


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _logu(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def sample_exposure(rng: np.random.Generator, kind: str) -> ExposureParams:
    """Sample a realistic exposure and console setting for ``kind`` in ``KINDS``.

    Ranges and their sources:
    * kVp: standing long-leg 70-90 kVp at SID 2.5-3 m, knee 55-75 kVp at 1.0-1.3 m (Bontrager's Textbook
      of Radiographic Positioning, 9th ed.; Sabharwal & Zhao, JBJS Am 90:1083, 2008).
    * filtration: inherent ~1 mm Al plus 2.5-4 mm Al added (IEC 60601-1-3 minimum 2.5 mm Al total).
    * fluence: IEC 62220-1 gives ~3e4 photons/mm^2 per uGy air kerma for RQA beams; open-field detector
      kerma of 15-150 uGy behind the patient's edge (2.5-5 uGy behind anatomy at speed class 200-400).
    * SPR: without grid 0.4-1.0 behind ~11 cm (knee) and 0.8-2.0 behind ~14 cm (thigh); with a grid
      0.08-0.45 (Chan & Doi, Med Phys 12:152, 1985; Sandborg et al., BJR 66:1989, 1993).
    * scatter kernel sigma 20-60 mm (Boone & Seibert, Med Phys 15:713, 1988).
    * detector: CsI 0.4-0.7 mm; MTF50 1.3-3 lp/mm -> Gaussian core sigma 0.07-0.2 mm; low-frequency drop
      (glare tail) 3-15 % over 0.5-2 mm (Samei & Flynn, Med Phys 30:608, 2003); electronic noise 1-10
      quanta rms (Antonuk et al., Med Phys 27:289, 2000 for a-Si arrays; CR read-out is noisier);
      residual row/column-correlated offsets up to 2 quanta after gain/offset correction (Granfors &
      Aufrichtig, Med Phys 27:1324, 2000).
    * heel effect: up to ~30 % loss at the anode edge of a long field (Bushberg et al., The Essential
      Physics of Medical Imaging, 3rd ed., ch. 6).
    * console: MUSICA-type multi-band enhancement (Vuylsteke & Schoeters, Proc SPIE 2167, 1994), unsharp
      masking and dynamic range compression (Prokop et al., Eur Radiol 13:2021, 2003); 12-16 bits stored.
    """
    if kind not in KINDS:
        raise InputError(f"unknown film kind {kind!r}; expected one of {KINDS}")
    longleg = kind == "longleg"
    grid = bool(rng.random() < 0.5)
    if longleg:
        kvp, sid = _u(rng, 70.0, 90.0), _u(rng, 2500.0, 3000.0)
        fluence, ref = _logu(rng, 6e5, 5e6), _u(rng, 120.0, 160.0)
        spr = _u(rng, 0.15, 0.45) if grid else _u(rng, 0.8, 2.0)
        heel = _u(rng, 0.0, 0.3)
    else:
        kvp, sid = _u(rng, 55.0, 75.0), _u(rng, 1000.0, 1300.0)
        fluence, ref = _logu(rng, 4e5, 3e6), _u(rng, 90.0, 130.0)
        spr = _u(rng, 0.08, 0.25) if grid else _u(rng, 0.4, 1.0)
        heel = _u(rng, 0.0, 0.15)
    return ExposureParams(
        kind=kind,
        kvp=kvp,
        filtration_mm_al=INHERENT_FILTRATION_MM_AL + _u(rng, 2.5, 4.0),
        sid_mm=sid,
        fluence_per_mm2=fluence,
        csi_mm=_u(rng, 0.4, 0.7),
        grid=grid,
        spr=spr,
        spr_reference_mm=ref,
        scatter_sigma_mm=_u(rng, 20.0, 60.0),
        blur_sigma_mm=_u(rng, 0.07, 0.2),
        blur_tail_fraction=_u(rng, 0.03, 0.15),
        blur_tail_sigma_mm=_u(rng, 0.5, 2.0),
        electronic_noise_quanta=_logu(rng, 1.0, 10.0),
        line_noise_quanta=_u(rng, 0.0, 2.0),
        heel_strength=heel,
        heel_anode_top=bool(rng.random() < 0.5),
        flat_field_corrected=bool(rng.random() < 0.6),  # DR outnumbers CR in current practice
        latitude_low_pct=_u(rng, 0.2, 3.0),
        latitude_high_pct=_u(rng, 98.0, 99.9),
        drc_strength=_u(rng, 0.0, 0.6),
        drc_sigma_mm=_u(rng, 8.0, 30.0),
        drc_pivot=_u(rng, 0.3, 0.7),
        fine_gain=_u(rng, 0.0, 1.5),
        fine_sigma_mm=_u(rng, 0.3, 1.0),
        mid_gain=_u(rng, 0.0, 1.0),
        mid_sigma_mm=_u(rng, 2.0, 6.0),
        tone_slope=_u(rng, 2.0, 6.0),
        gamma=_u(rng, 0.75, 1.35),
        bits_stored=int(rng.choice([12, 12, 14, 15, 16])),
        photometric="MONOCHROME1" if rng.random() < 0.35 else "MONOCHROME2",
        window_width_frac=_u(rng, 0.85, 1.05),
        window_center_shift=_u(rng, -0.05, 0.05),
    )


# --- smoothing helpers --------------------------------------------------------------------------------
def _block_mean(img: F32, f: int) -> F32:
    r, c = img.shape
    rr, cc = -(-r // f) * f, -(-c // f) * f
    pad = np.pad(img, ((0, rr - r), (0, cc - c)), mode="edge")
    return pad.reshape(rr // f, f, cc // f, f).mean(axis=(1, 3), dtype=np.float32)


def _upsample_axis(small: F32, f: int, n: int, axis: int) -> F32:
    pos = np.clip((np.arange(n) - (f - 1) / 2.0) / f, 0.0, small.shape[axis] - 1)
    i0 = np.floor(pos).astype(np.intp)
    i1 = np.minimum(i0 + 1, small.shape[axis] - 1)
    w = (pos - i0).astype(np.float32)
    a, b = np.take(small, i0, axis=axis), np.take(small, i1, axis=axis)
    shape = [1, 1]
    shape[axis] = n
    return a + (b - a) * w.reshape(shape)


def smooth(img: F32, sigma_px: float) -> F32:
    """Gaussian low-pass; wide kernels run on a block-averaged copy (they pass nothing that fine)."""
    if sigma_px <= 0:
        return img.astype(np.float32, copy=True)
    if sigma_px <= 4.0:
        return ndimage.gaussian_filter(img.astype(np.float32), sigma_px, mode="nearest")
    f = max(1, int(sigma_px / 2.0))
    small = ndimage.gaussian_filter(_block_mean(img.astype(np.float32), f), sigma_px / f, mode="nearest")
    out = _upsample_axis(small, f, img.shape[0], 0)
    return _upsample_axis(out, f, img.shape[1], 1)


# --- physics ------------------------------------------------------------------------------------------
def _check_paths(paths_mm: NDArray[Any], pitch_mm: float) -> None:
    if paths_mm.ndim != 3 or paths_mm.shape[0] != len(BASIS):
        raise InputError(f"paths must have shape ({len(BASIS)}, rows, cols), got {paths_mm.shape}")
    if pitch_mm <= 0:
        raise InputError("pixel pitch must be positive")


@numba.njit(parallel=True, fastmath=True, cache=True)
def _spectral_sum(
    p: NDArray[np.float32],
    mu: NDArray[np.float32],
    w1: NDArray[np.float64],
    w2: NDArray[np.float64],
    s_out: NDArray[np.float32],
    q_out: NDArray[np.float32],
) -> None:  # pragma: no cover - compiled
    # One pass per pixel over all bins keeps memory flat (no per-bin full-size temporaries).
    rows, cols = s_out.shape
    nb = w1.shape[0]
    for r in numba.prange(rows):
        for c in range(cols):
            a, b, m = p[0, r, c], p[1, r, c], p[2, r, c]
            acc1 = 0.0
            acc2 = 0.0
            for k in range(nb):
                t = np.exp(-(mu[0, k] * a + mu[1, k] * b + mu[2, k] * m))
                acc1 += w1[k] * t
                acc2 += w2[k] * t
            s_out[r, c] = acc1
            q_out[r, c] = acc2


def expected_signal(paths_mm: NDArray[Any], params: ExposureParams) -> tuple[F32, F32, float, float]:
    """Per incident photon: mean absorbed energy ``s`` (keV) and its second moment ``q`` (keV^2) behind
    the given basis path lengths, plus their open-beam values ``s0``, ``q0``. Exact sum over bins."""
    spec = tungsten_spectrum(params.kvp, params.filtration_mm_al, params.spectrum_bin_kev)
    w1, w2 = detector_weights(spec, params.csi_mm)
    mu = np.stack([mu_per_mm(b, spec.energies_kev) for b in BASIS]).astype(np.float32)  # (3, bins)
    _, rows, cols = paths_mm.shape
    s = np.empty((rows, cols), np.float32)
    q = np.empty((rows, cols), np.float32)
    step = max(1, _CHUNK_PIXELS // max(cols, 1))
    for r0 in range(0, rows, step):
        p = np.ascontiguousarray(paths_mm[:, r0 : r0 + step], dtype=np.float32)
        _spectral_sum(p, mu, w1, w2, s[r0 : r0 + step], q[r0 : r0 + step])
    return s, q, float(w1.sum()), float(w2.sum())


def falloff(rows: int, cols: int, pitch_mm: float, params: ExposureParams) -> F32:
    """Inverse-square and obliquity loss cos^3(theta) away from the central ray (detector centre), left in
    the image when the detector is not flood-field calibrated (CR cassettes); 1 when it is (DR)."""
    if params.flat_field_corrected:
        return np.ones((rows, cols), np.float32)
    y = (np.arange(rows, dtype=np.float32) - (rows - 1) / 2.0) * np.float32(pitch_mm)
    x = (np.arange(cols, dtype=np.float32) - (cols - 1) / 2.0) * np.float32(pitch_mm)
    r2 = y[:, None] ** 2 + x[None, :] ** 2
    sid2 = np.float32(params.sid_mm**2)
    return (sid2 / (sid2 + r2)) ** np.float32(1.5)


def heel_profile(rows: int, params: ExposureParams) -> F32:
    """Relative fluence along the anode-cathode axis (rows), 1 at the centre, falling steeply toward the
    anode as the anode's self-absorption path grows."""
    x = np.linspace(0.0, 1.0, rows, dtype=np.float64)  # 0 = cathode edge, 1 = anode edge
    if params.heel_anode_top:
        x = x[::-1]
    g = params.heel_strength
    prof = (1.0 - g * x**2) / (1.0 - g * 0.25)
    return prof.astype(np.float32)


@dataclass(frozen=True, eq=False)
class RawExposure:
    """Detector output before the console: ``signal`` in keV absorbed per pixel, ``open_signal`` the
    noiseless open-beam value at the field centre (the console's gain reference)."""

    signal: F32
    open_signal: float
    quantum_kev: float  # mean absorbed energy per detected quantum in the open beam


def simulate_detector(
    paths_mm: NDArray[Any],
    pitch_mm: float,
    params: ExposureParams,
    rng: np.random.Generator,
    *,
    primary_gain: F32 | None = None,
    exposure_gain: F32 | None = None,
) -> RawExposure:
    """Primary + scatter, quantum noise, blur and electronic noise.

    ``primary_gain`` multiplies the incident fluence before scatter forms (collimator blades, grid
    shadows); ``exposure_gain`` multiplies the photons reaching the detector, primary and scatter alike
    (per-exposure mAs steps of stitched films, double-exposed seam lines): mean and variance both scale
    with it, as for any change of photon number."""
    _check_paths(paths_mm, pitch_mm)
    s, q, s0, q0 = expected_signal(paths_mm, params)
    rows, cols = s.shape
    n0 = params.fluence_per_mm2 * pitch_mm * pitch_mm
    n = np.float32(n0) * heel_profile(rows, params)[:, None] * falloff(rows, cols, pitch_mm, params)
    if primary_gain is not None:
        n = n * primary_gain.astype(np.float32)
    primary = n * s
    # Scatter source: transmitted energy x electron-density thickness; a uniform slab of the reference
    # thickness then has SPR == params.spr exactly (the kernel integrates to one).
    t_e = sum(np.float32(k) * np.asarray(paths_mm[i], np.float32) for i, k in enumerate(ELECTRON_DENSITY_REL))
    amp = np.float32(params.spr / params.spr_reference_mm)
    scatter = amp * smooth(primary * t_e, params.scatter_sigma_mm / pitch_mm)
    del t_e
    energy = q0 / s0  # keV per quantum, open beam
    e_local = np.where(s > 0, q / np.maximum(s, 1e-30), energy).astype(np.float32)
    mean = primary + scatter
    var = n * q + scatter * e_local
    del primary, scatter, e_local, q
    if exposure_gain is not None:
        g = exposure_gain.astype(np.float32)
        mean, var = mean * g, var * g
    # Compound Poisson through equivalent quanta: Neq = mean^2 / var, each worth var / mean keV.
    ok = var > 0
    neq = np.where(ok, mean * mean / np.where(ok, var, 1.0), 0.0)
    per = np.where(ok, var / np.where(ok, mean, 1.0), 0.0).astype(np.float32)
    # Poisson where counts are low; above 100 quanta its skew (< 0.1) is invisible and a Gaussian with
    # the same mean and variance is ~10x cheaper on 27 Mpixel films.
    low = neq < 100.0
    counts = neq + np.sqrt(neq) * rng.standard_normal(neq.shape, dtype=np.float32)
    counts[low] = rng.poisson(neq[low])
    noisy = counts.astype(np.float32) * per
    del counts, low
    del neq, per, mean, var
    core = ndimage.gaussian_filter(noisy, params.blur_sigma_mm / pitch_mm, mode="nearest")
    tail = smooth(noisy, params.blur_tail_sigma_mm / pitch_mm)
    a = np.float32(params.blur_tail_fraction)
    out = (1 - a) * core + a * tail
    del core, tail, noisy
    out += rng.normal(0.0, params.electronic_noise_quanta * energy, size=out.shape).astype(np.float32)
    if params.line_noise_quanta > 0:
        line = params.line_noise_quanta * energy
        out += rng.normal(0.0, line, size=(rows, 1)).astype(np.float32)
        out += rng.normal(0.0, line, size=(1, cols)).astype(np.float32)
    return RawExposure(signal=out.astype(np.float32), open_signal=float(n0 * s0), quantum_kev=energy)


def log_normalise(raw: RawExposure) -> F32:
    """The console's log step: ln(open / signal), i.e. an estimate of the total attenuation line
    integral; signals below half a quantum are floored (dead pixels never reach -inf)."""
    floor = 0.5 * raw.quantum_kev
    return np.log(np.float32(raw.open_signal) / np.maximum(raw.signal, np.float32(floor))).astype(np.float32)


def _soft_clip(x: F32, lo: float, hi: float) -> F32:
    """Identity inside [lo, hi]; beyond, approaches lo - 0.1 / hi + 0.1 smoothly (tanh knee)."""
    w = np.float32(0.1)
    above = np.float32(hi) + w * np.tanh((x - np.float32(hi)) / w)
    below = np.float32(lo) - w * np.tanh((np.float32(lo) - x) / w)
    return np.where(x > hi, above, np.where(x < lo, below, x)).astype(np.float32)


def _limit(d: F32, cap: float) -> F32:
    """d for |d| << cap, saturating at +-cap for large |d|."""
    return (d / (np.float32(1.0) + np.abs(d) / np.float32(cap))).astype(np.float32)


def process_display(
    log_img: F32, pitch_mm: float, params: ExposureParams, roi: NDArray[np.bool_] | None = None
) -> F32:
    """Console image processing to a display brightness in [0, 1] (1 = white, i.e. bone).

    ``roi`` marks the exposed field: consoles find the collimation edges and take the latitude (the
    histogram percentiles) only from inside it."""
    sub = log_img[::4, ::4]
    inside = sub > 0.15
    if roi is not None:
        inside &= roi[::4, ::4]
    anatomy = sub[inside]
    if anatomy.size < 0.01 * sub.size:
        anatomy = sub.ravel()
    lo, hi = np.percentile(anatomy, [params.latitude_low_pct, params.latitude_high_pct])
    x = (log_img - np.float32(lo)) / np.float32(max(float(hi - lo), 1e-3))
    # Values far outside the latitude (metal, direct beam) are compressed first, so the enhancement
    # below cannot ring around them; consoles do the same before their band processing.
    x = _soft_clip(x, -0.25, 1.25)
    if params.drc_strength > 0:
        # Dynamic range compression acts only above a pivot of the low-pass (thick, bright regions),
        # like the density-selective DRC of CR consoles, so air stays black.
        low = smooth(x, params.drc_sigma_mm / pitch_mm)
        x = x - np.float32(params.drc_strength) * np.maximum(low - np.float32(params.drc_pivot), 0.0)
        del low
    b1 = smooth(x, params.fine_sigma_mm / pitch_mm)
    b2 = smooth(b1, params.mid_sigma_mm / pitch_mm)
    # MUSICA-style non-linear band gain: small details are amplified, large edges (metal, skin line)
    # only up to a cap, which avoids the halo overshoot of plain unsharp masking.
    fine = _limit(x - b1, 0.08)
    mid = _limit(b1 - b2, 0.15)
    x = x + np.float32(params.fine_gain) * fine + np.float32(params.mid_gain) * mid
    del fine, mid
    del b1, b2
    k = params.tone_slope
    lo_s, hi_s = 1.0 / (1.0 + np.exp(k / 2.0)), 1.0 / (1.0 + np.exp(-k / 2.0))
    y = 1.0 / (1.0 + np.exp(np.float32(-k) * (x - np.float32(0.5))))
    y = np.clip((y - np.float32(lo_s)) / np.float32(hi_s - lo_s), 0.0, 1.0)
    return np.power(y, np.float32(params.gamma)).astype(np.float32)


@dataclass(frozen=True, eq=False)
class Film:
    """A stored film: ``pixels`` as written to DICOM, its VOI window, and the display rendering."""

    pixels: NDArray[np.uint16]
    bits_stored: int
    photometric: str
    window_center: float
    window_width: float
    pixel_spacing_mm: float
    params: ExposureParams
    presentation: F32


def presentation_of(pixels: NDArray[Any], window_center: float, window_width: float, photometric: str) -> F32:
    """What a viewer shows: the linear VOI window, inverted for MONOCHROME1; 1 = white."""
    v = np.clip((pixels.astype(np.float32) - (window_center - window_width / 2.0)) / window_width, 0.0, 1.0)
    return (1.0 - v if photometric == "MONOCHROME1" else v).astype(np.float32)


def encode_film(brightness: F32, pitch_mm: float, params: ExposureParams) -> Film:
    """Quantise a display brightness to ``bits_stored`` and apply photometric + VOI window."""
    maxv = float(2**params.bits_stored - 1)
    m2 = np.rint(np.clip(brightness, 0.0, 1.0) * maxv).astype(np.uint16)
    ww = maxv * params.window_width_frac
    wc = maxv * (0.5 + params.window_center_shift)
    if params.photometric == "MONOCHROME1":
        pixels = (np.uint16(maxv) - m2).astype(np.uint16)
        wc = maxv - wc
    else:
        pixels = m2
    return Film(
        pixels=pixels,
        bits_stored=params.bits_stored,
        photometric=params.photometric,
        window_center=wc,
        window_width=ww,
        pixel_spacing_mm=pitch_mm,
        params=params,
        presentation=presentation_of(pixels, wc, ww, params.photometric),
    )


def render_film(paths_mm: NDArray[Any], pitch_mm: float, params: ExposureParams, seed: int) -> Film:
    """Path-length images (3, rows, cols) in mm of (water, cortical bone, CoCr) -> a film.

    Deterministic in (paths, pitch, params, seed): ``seed`` drives only the noise."""
    rng = np.random.default_rng(seed)
    raw = simulate_detector(paths_mm, pitch_mm, params, rng)
    bright = process_display(log_normalise(raw), pitch_mm, params)
    return encode_film(bright, pitch_mm, params)
