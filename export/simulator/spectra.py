"""Attenuation tables, the tungsten-anode spectrum, the CsI detector response and the HU basis split.

All mass attenuation coefficients are total with coherent scattering (mu/rho, cm^2/g) typed from the NIST
X-Ray Mass Attenuation Coefficients tables (J.H. Hubbell and S.M. Seltzer, NISTIR 5632, 1995/2004,
https://physics.nist.gov/PhysRefData/XrayMassCoef/) at the tabulated energies 10..150 keV, plus the
absorption edges that fall inside that range. Values between nodes are interpolated log-log, which is
how NIST itself recommends using the tables. Energies are in keV throughout this module.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from appliance.errors import InputError

log = logging.getLogger(__name__)

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class Material:
    """One attenuating material: density and a (keV, mu/rho) table, edges given as repeated energies."""

    name: str
    density_g_cm3: float
    table: tuple[tuple[float, float], ...]
    source: str


_E = (10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 80.0, 100.0, 150.0)


def _rows(values: tuple[float, ...]) -> tuple[tuple[float, float], ...]:
    return tuple(zip(_E, values, strict=True))


# NIST ComTab "Water, Liquid", density 1.0.
WATER = Material(
    "water",
    1.0,
    _rows((5.329, 1.673, 0.8096, 0.3756, 0.2683, 0.2269, 0.2059, 0.1837, 0.1707, 0.1505)),
    "NIST XCOM/NISTIR 5632 ComTab water",
)
# NIST ComTab "Bone, Cortical (ICRU-44)", density 1.92.
CORTICAL_BONE = Material(
    "cortical_bone",
    1.92,
    _rows((28.51, 9.032, 4.001, 1.331, 0.6655, 0.4242, 0.3148, 0.2229, 0.1855, 0.1480)),
    "NIST XCOM/NISTIR 5632 ComTab bone, cortical (ICRU-44)",
)
# NIST ElemTab Z=13, density 2.699.
ALUMINIUM = Material(
    "aluminium",
    2.699,
    _rows((26.23, 7.955, 3.441, 1.128, 0.5685, 0.3681, 0.2778, 0.2018, 0.1704, 0.1378)),
    "NIST XCOM/NISTIR 5632 ElemTab Z=13",
)
# NIST ElemTab Z=22, density 4.54 (values typed from the table; K edge 4.97 keV lies below 10 keV).
TITANIUM = Material(
    "titanium",
    4.54,
    _rows((110.7, 35.87, 15.85, 4.972, 2.214, 1.213, 0.7661, 0.4052, 0.2721, 0.1649)),
    "NIST XCOM/NISTIR 5632 ElemTab Z=22",
)
# Cobalt-chromium-molybdenum implant alloy (ASTM F75, density 8.3 g/cm^3) modelled with the iron table
# (NIST ElemTab Z=26): Fe (Z=26) lies between Cr (24) and Co (27), and no K edge of Fe, Cr or Co lies in
# 10..150 keV. The ~6 % Mo (K edge 20 keV) is ignored; it only matters below ~30 keV where metal is opaque.
COCR = Material(
    "cocr",
    8.3,
    _rows((170.6, 57.08, 25.68, 8.176, 3.629, 1.958, 1.205, 0.5952, 0.3717, 0.1964)),
    "NIST XCOM/NISTIR 5632 ElemTab Z=26 (iron as CoCr proxy), density ASTM F75",
)
# NIST ComTab "Cesium Iodide", density 4.51, with the I (33.17 keV) and Cs (35.98 keV) K edges.
CSI = Material(
    "csi",
    4.51,
    (
        (10.0, 171.1),
        (15.0, 58.15),
        (20.0, 26.86),
        (30.0, 9.045),
        (33.1694, 6.923),
        (33.1694, 21.22),
        (35.9846, 17.19),
        (35.9846, 30.27),
        (40.0, 22.97),
        (50.0, 12.87),
        (60.0, 7.921),
        (80.0, 3.677),
        (100.0, 2.035),
        (150.0, 0.729),
    ),
    "NIST XCOM/NISTIR 5632 ComTab cesium iodide",
)
# Mass energy-absorption coefficient of dry air (mu_en/rho), NIST ComTab "Air, Dry", for air kerma / HVL.
AIR_MU_EN = Material(
    "air_mu_en",
    0.001205,
    _rows((4.742, 1.334, 0.5389, 0.1537, 0.06833, 0.04098, 0.03041, 0.02407, 0.02325, 0.02496)),
    "NIST XCOM/NISTIR 5632 ComTab air, dry (mu_en/rho)",
)

MATERIALS: dict[str, Material] = {
    m.name: m for m in (WATER, CORTICAL_BONE, ALUMINIUM, TITANIUM, COCR, CSI, AIR_MU_EN)
}

# Order of the basis planes every path-length image and basis volume uses.
BASIS = ("water", "cortical_bone", "cocr")
# Density of the material each basis plane is expressed in; a basis value of 1 means "this much of it".
BASIS_DENSITY = tuple(MATERIALS[b].density_g_cm3 for b in BASIS)


def mass_attenuation(material: str, energy_kev: ArrayLike) -> FloatArray:
    """mu/rho in cm^2/g at ``energy_kev`` (log-log interpolation; edges are taken as sharp steps)."""
    try:
        mat = MATERIALS[material]
    except KeyError as exc:
        raise InputError(f"unknown material {material!r}; known: {sorted(MATERIALS)}") from exc
    e = np.asarray(energy_kev, dtype=np.float64)
    if np.any(e < 10.0 - 1e-9) or np.any(e > 150.0 + 1e-9):
        raise InputError("attenuation tables cover 10..150 keV")
    te = np.log(np.array([r[0] for r in mat.table]))
    tv = np.log(np.array([r[1] for r in mat.table]))
    le = np.log(e)
    # side="right" picks the post-edge row for an energy exactly at an edge (the edge belongs above).
    hi = np.clip(np.searchsorted(te, le, side="right"), 1, len(te) - 1)
    lo = hi - 1
    span = te[hi] - te[lo]
    frac = np.where(span > 0, (le - te[lo]) / np.where(span > 0, span, 1.0), 0.0)
    return np.exp(tv[lo] + frac * (tv[hi] - tv[lo]))


def mu_per_mm(material: str, energy_kev: ArrayLike, density_g_cm3: float | None = None) -> FloatArray:
    """Linear attenuation coefficient in 1/mm at the material's (or the given) density."""
    rho = MATERIALS[material].density_g_cm3 if density_g_cm3 is None else density_g_cm3
    return mass_attenuation(material, energy_kev) * rho / 10.0


def cocr_equivalent(material: str, energy_kev: float = 60.0, density_g_cm3: float | None = None) -> float:
    """Thickness of CoCr that attenuates like 1 mm of ``material`` at ``energy_kev``: how to put a
    titanium (~0.35 at 60 keV) or steel (~0.95) object into the metal basis plane. A single energy is
    an approximation: Ti is relatively more transparent at low energy than CoCr."""
    return float(mu_per_mm(material, energy_kev, density_g_cm3) / mu_per_mm("cocr", energy_kev))


# --- basis decomposition of CT numbers ---------------------------------------------------------------
CT_EFFECTIVE_KEV = 70.0  # typical effective energy of a 120 kVp clinical CT beam
SOFT_TISSUE_HU = 100.0  # top of the soft-tissue segment (Schneider et al., PMB 45:459, 2000)
METAL_HU = 2500.0  # above this a clinical CT voxel is metal (cortical bone stays below ~1900 HU)


def bone_hu(energy_kev: float = CT_EFFECTIVE_KEV) -> float:
    """CT number of pure ICRU-44 cortical bone at the CT effective energy (about 1590 HU at 70 keV)."""
    mw = float(mu_per_mm("water", energy_kev))
    mb = float(mu_per_mm("cortical_bone", energy_kev))
    return (mb / mw - 1.0) * 1000.0


def hu_to_basis(hu: ArrayLike, metal_fraction: ArrayLike | None = None) -> NDArray[np.float32]:
    """Split CT numbers into (water, cortical bone, CoCr) density-scaled volume fractions, shape (3, ...).

    Each plane's value times the voxel path length (mm) is the thickness of that material at its nominal
    density, so ``sum_k value_k * mu_k(E)`` reproduces the voxel's HU at 70 keV while bone keeps its steep
    low-energy photoelectric rise (contrast falls with kVp, as on real films).

    * HU <= 100: water at density 1 + HU/1000 (air -> 0, fat -100 -> 0.9, muscle 40 -> 1.04).
    * 100 < HU <= bone_hu (~1590): water at density 1.1 mixed with cortical bone by volume, continuous at
      100 HU (a two-component model in the spirit of Schneider et al. 2000).
    * bone_hu < HU < 2500: cortical bone scaled denser than ICRU-44.
    * HU >= 2500: one full CoCr voxel (CT numbers of metal are clipped by the scanner and unusable).

    ``metal_fraction`` (same shape, 0..1), when given, is an explicit metal volume fraction from the
    phantom; it displaces the same fraction of the tissue basis.
    """
    h_all = np.asarray(hu)
    m_all = None
    if metal_fraction is not None:
        m_all = np.broadcast_to(np.asarray(metal_fraction), h_all.shape)
    out = np.empty((3, *h_all.shape), np.float32)
    if h_all.ndim == 0:
        _basis_into(h_all[None], None if m_all is None else m_all[None], out[:, None])
        return out
    # Slabs along the first axis bound the float32 temporaries for 0.5 mm whole-limb volumes.
    step = max(1, (1 << 22) // max(1, int(np.prod(h_all.shape[1:]))))
    for i in range(0, h_all.shape[0], step):
        m = None if m_all is None else m_all[i : i + step]
        _basis_into(h_all[i : i + step], m, out[:, i : i + step])
    return out


def _basis_into(
    hu: NDArray[np.generic], metal_fraction: NDArray[np.generic] | None, out: NDArray[np.float32]
) -> None:
    h = np.asarray(hu, dtype=np.float32)
    hb = np.float32(bone_hu())
    soft = np.float32(SOFT_TISSUE_HU)
    soft_density = np.float32(1.0 + SOFT_TISSUE_HU / 1000.0)
    f_bone = np.clip((h - soft) / (hb - soft), 0.0, 1.0)
    water = np.where(h > soft, (1.0 - f_bone) * soft_density, np.clip(1.0 + h / 1000.0, 0.0, soft_density))
    bone = np.where(h > hb, (1.0 + h / 1000.0) / (1.0 + hb / 1000.0), f_bone)
    is_metal = h >= METAL_HU
    water[is_metal] = 0.0
    bone[is_metal] = 0.0
    metal = is_metal.astype(np.float32)
    if metal_fraction is not None:
        m = np.clip(np.asarray(metal_fraction, dtype=np.float32), 0.0, 1.0)
        water *= 1.0 - m
        bone *= 1.0 - m
        metal = np.maximum(metal, m)
    out[0], out[1], out[2] = water, bone, metal


# --- spectrum ----------------------------------------------------------------------------------------
TUNGSTEN_K_EDGE_KEV = 69.525
# Tungsten K lines (keV) and relative photon yields (Kalpha1 = 100), from the X-ray Data Booklet
# (LBNL, Thompson et al. 2009, tables 1-2 and 1-3).
TUNGSTEN_K_LINES = ((57.98, 58.0), (59.32, 100.0), (67.24, 22.0), (69.10, 8.0))
# Characteristic yield grows as (U - 1)^1.63 with the overvoltage U = kVp / K edge (Green and Cosslett,
# J Phys D 1:425, 1968). The scale makes the K lines about 8 % of the energy fluence of a 100 kVp beam
# behind 2.5 mm Al, in line with TASMIP (Boone and Seibert, Med Phys 24:1661, 1997) spectra.
K_LINE_SCALE = 20.0
INHERENT_FILTRATION_MM_AL = 1.0  # tube window + oil; IEC 60522 inherent filtration is typically 0.5-1.5


@dataclass(frozen=True)
class Spectrum:
    """Photon spectrum: bin centres (keV) and relative photon numbers per bin (summing to 1)."""

    energies_kev: FloatArray
    photons: FloatArray

    def mean_energy(self) -> float:
        return float(self.energies_kev @ self.photons)


def tungsten_spectrum(kvp: float, total_filtration_mm_al: float, bin_kev: float = 2.0) -> Spectrum:
    """Filtered tungsten-anode spectrum: Kramers' bremsstrahlung N(E) ~ (kVp - E) / E plus K lines.

    ``total_filtration_mm_al`` is the whole filtration (inherent + added) in mm Al; IEC 60601-1-3 asks for
    at least 2.5 mm Al above 70 kVp. Photons below 10 keV are dropped: 2.5 mm Al passes < 1e-7 of them.
    """
    if not 40.0 <= kvp <= 150.0:
        raise InputError(f"kVp {kvp} outside 40..150")
    if total_filtration_mm_al < 0:
        raise InputError("filtration must be non-negative")
    edges = np.arange(10.0, kvp + 1e-9, bin_kev)
    if edges[-1] < kvp:
        edges = np.append(edges, kvp)
    # Integrate Kramers within each bin on a fine grid so wide bins stay exact.
    fine = np.linspace(10.0, kvp, int((kvp - 10.0) * 10) + 1)
    fine_mid = 0.5 * (fine[1:] + fine[:-1])
    dens = (kvp - fine_mid) / fine_mid * np.diff(fine)
    idx = np.clip(np.searchsorted(edges, fine_mid, side="right") - 1, 0, len(edges) - 2)
    photons = np.bincount(idx, weights=dens, minlength=len(edges) - 1)
    # A kVp just above a bin edge leaves an empty sliver bin; give it its midpoint energy (its weight is 0)
    # instead of 0 keV, which lies outside the attenuation tables.
    mids = 0.5 * (edges[:-1] + edges[1:])
    sums = np.bincount(idx, weights=dens * fine_mid, minlength=len(edges) - 1)
    centres = np.where(photons > 0, sums / np.maximum(photons, 1e-30), mids)
    if kvp > TUNGSTEN_K_EDGE_KEV:
        u = kvp / TUNGSTEN_K_EDGE_KEV
        brems_at_line = (kvp - 59.32) / 59.32  # Kramers density at Kalpha1, same units as ``dens``
        total_yield = sum(y for _, y in TUNGSTEN_K_LINES)
        for e_line, y in TUNGSTEN_K_LINES:
            b = int(np.clip(np.searchsorted(edges, e_line, side="right") - 1, 0, len(photons) - 1))
            n_line = K_LINE_SCALE * (u - 1.0) ** 1.63 * brems_at_line * y / total_yield
            centres[b] = (centres[b] * photons[b] + e_line * n_line) / (photons[b] + n_line)
            photons[b] += n_line
    photons = photons * np.exp(-mu_per_mm("aluminium", centres) * total_filtration_mm_al)
    keep = photons > photons.sum() * 1e-6
    photons, centres = photons[keep], centres[keep]
    return Spectrum(energies_kev=centres, photons=photons / photons.sum())


def csi_absorbed_fraction(energy_kev: ArrayLike, thickness_mm: float, packing: float = 0.8) -> FloatArray:
    """Fraction of photons absorbed in a needle-structured CsI:Tl layer (packing ~0.75-0.85 of bulk
    density; Nikl, Meas Sci Technol 17:R37, 2006). K-fluorescence escape is ignored."""
    mu = mu_per_mm("csi", energy_kev) * packing
    return 1.0 - np.exp(-mu * thickness_mm)


def detector_weights(spectrum: Spectrum, csi_mm: float) -> tuple[FloatArray, FloatArray]:
    """Per-bin weights of an energy-integrating detector: mean signal ``N E eta`` and its variance
    ``N E^2 eta`` (compound Poisson: each absorbed quantum deposits ~E), in keV per incident photon."""
    e = spectrum.energies_kev
    eta = csi_absorbed_fraction(e, csi_mm)
    w1 = spectrum.photons * e * eta
    w2 = spectrum.photons * e * e * eta
    return w1, w2


def air_kerma_weights(spectrum: Spectrum) -> FloatArray:
    """Relative air kerma per bin (E mu_en/rho of air), for half-value layers."""
    e = spectrum.energies_kev
    return spectrum.photons * e * mass_attenuation("air_mu_en", e)


def half_value_layer_mm_al(spectrum: Spectrum) -> float:
    """First HVL in mm Al of the beam, from air kerma (bisection on the transmitted kerma)."""
    w = air_kerma_weights(spectrum)
    mu = mu_per_mm("aluminium", spectrum.energies_kev)
    total = float(w.sum())
    lo, hi = 0.0, 50.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if float(w @ np.exp(-mu * mid)) > 0.5 * total:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)
