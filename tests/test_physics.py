"""Image-formation physics of the radiograph simulator: Beer-Lambert, spectra, noise, encoding."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
from pathlib import Path

import numpy as np
import pytest

from appliance.errors import InputError
from export.simulator.physics import (
    KINDS,
    ExposureParams,
    encode_film,
    expected_signal,
    falloff,
    log_normalise,
    process_display,
    render_film,
    sample_exposure,
    simulate_detector,
)
from export.simulator.spectra import (
    CT_EFFECTIVE_KEV,
    bone_hu,
    cocr_equivalent,
    csi_absorbed_fraction,
    half_value_layer_mm_al,
    hu_to_basis,
    mass_attenuation,
    mu_per_mm,
    tungsten_spectrum,
)


def _params(kind: str = "knee_ap", **overrides: object) -> ExposureParams:
    base = sample_exposure(np.random.default_rng(0), kind)
    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]


def _slab(water_mm: float, bone_mm: float = 0.0, metal_mm: float = 0.0, shape=(8, 8)) -> np.ndarray:
    p = np.zeros((3, *shape), np.float32)
    p[0], p[1], p[2] = water_mm, bone_mm, metal_mm
    return p


def _transmission(params: ExposureParams, water: float, bone: float = 0.0) -> float:
    s, _, s0, _ = expected_signal(_slab(water, bone, shape=(1, 1)), params)
    return float(s[0, 0]) / s0


# --- tables and spectrum -------------------------------------------------------------------------------
def test_tables_reproduce_nist_nodes_and_edges() -> None:
    assert mass_attenuation("water", 60.0) == pytest.approx(0.2059, rel=1e-9)
    assert mass_attenuation("cortical_bone", 30.0) == pytest.approx(1.331, rel=1e-9)
    # The iodine K edge makes CsI jump by a factor ~3 across 33.17 keV.
    below, above = mass_attenuation("csi", [33.1, 33.3])
    assert above / below > 2.5
    with pytest.raises(InputError):
        mass_attenuation("unobtainium", 50.0)
    with pytest.raises(InputError):
        mass_attenuation("water", 5.0)


def test_spectrum_has_k_lines_only_above_the_edge_and_realistic_hvl() -> None:
    low = tungsten_spectrum(65.0, 3.5, bin_kev=1.0)
    high = tungsten_spectrum(100.0, 3.5, bin_kev=1.0)
    assert low.energies_kev.max() <= 65.0
    kalpha = np.argmin(abs(high.energies_kev - 59.5))
    neighbours = high.photons[kalpha - 3] + high.photons[kalpha + 3]
    assert high.photons[kalpha] > neighbours  # a line stands out of the continuum
    assert abs(low.photons.sum() - 1.0) < 1e-9
    # US 21 CFR 1020.30 asks >= 2.3-2.9 mm Al HVL at 80 kVp; typical total filtration gives ~2.5-3.5.
    hvl = half_value_layer_mm_al(tungsten_spectrum(80.0, 3.5))
    assert 2.3 < hvl < 3.6
    assert half_value_layer_mm_al(tungsten_spectrum(80.0, 5.0)) > hvl  # more filter, harder beam


def test_csi_absorbs_nearly_everything_at_low_energy_and_less_at_high() -> None:
    eta = csi_absorbed_fraction([20.0, 60.0, 120.0], 0.6)
    assert eta[0] > 0.99
    assert eta[0] > eta[1] > eta[2] > 0.2


def test_cocr_equivalents_of_titanium_and_steel() -> None:
    assert 0.3 < cocr_equivalent("titanium") < 0.4
    assert cocr_equivalent("cocr", density_g_cm3=7.87) == pytest.approx(7.87 / 8.3)
    assert cocr_equivalent("titanium", 40.0) < cocr_equivalent("titanium", 100.0)


# --- basis decomposition -------------------------------------------------------------------------------
def test_hu_to_basis_reproduces_hu_at_ct_energy() -> None:
    hu = np.linspace(-1000, 2400, 341)
    basis = hu_to_basis(hu).astype(np.float64)
    assert basis.shape == (3, hu.size)
    mu = sum(basis[i] * mu_per_mm(m, CT_EFFECTIVE_KEV) for i, m in enumerate(("water", "cortical_bone")))
    mu_w = float(mu_per_mm("water", CT_EFFECTIVE_KEV))
    np.testing.assert_allclose((mu / mu_w - 1) * 1000, hu, atol=0.5)
    assert np.all(basis[2] == 0)


def test_hu_to_basis_named_tissues_and_metal() -> None:
    air, fat, water, bone, metal = hu_to_basis(np.array([-1000.0, -100.0, 0.0, bone_hu(), 3000.0])).T
    np.testing.assert_allclose(air, [0, 0, 0], atol=1e-6)
    np.testing.assert_allclose(fat, [0.9, 0, 0], atol=1e-6)
    np.testing.assert_allclose(water, [1, 0, 0], atol=1e-6)
    np.testing.assert_allclose(bone, [0, 1, 0], atol=1e-4)
    np.testing.assert_allclose(metal, [0, 0, 1], atol=1e-6)
    mixed = hu_to_basis(np.array([0.0, 1000.0]), metal_fraction=np.array([0.5, 0.25]))
    np.testing.assert_allclose(mixed[:, 0], [0.5, 0, 0.5], atol=1e-6)
    assert mixed[2, 1] == pytest.approx(0.25)


def test_hu_to_basis_slabs_and_scalars_agree_with_flat_input() -> None:
    rng = np.random.default_rng(0)
    vol = rng.uniform(-1000, 3000, size=(9, 700, 700)).astype(np.float32)
    metal = (rng.random(vol.shape) < 0.01).astype(np.float32)
    slabbed = hu_to_basis(vol, metal_fraction=metal)  # processed in several slabs
    flat = hu_to_basis(vol.ravel(), metal_fraction=metal.ravel()).reshape(3, *vol.shape)
    np.testing.assert_array_equal(slabbed, flat)
    assert hu_to_basis(np.float32(0.0)).shape == (3,)
    np.testing.assert_allclose(hu_to_basis(0.0), [1.0, 0.0, 0.0])


# --- Beer-Lambert ------------------------------------------------------------------------------------
def test_zero_path_gives_full_scale_flat_field() -> None:
    p = _params(heel_strength=0.0, flat_field_corrected=True)
    s, q, s0, q0 = expected_signal(_slab(0.0, shape=(16, 16)), p)
    np.testing.assert_allclose(s, s0, rtol=1e-6)
    np.testing.assert_allclose(q, q0, rtol=1e-6)
    raw = simulate_detector(_slab(0.0, shape=(64, 64)), 0.5, p, np.random.default_rng(1))
    assert abs(float(raw.signal.mean()) / raw.open_signal - 1.0) < 0.01


def test_doubling_water_follows_effective_coefficient_and_hardens() -> None:
    p = _params(kvp=70.0)
    t20, t40 = _transmission(p, 20.0), _transmission(p, 40.0)
    mu_eff = -np.log(t20) / 20.0
    assert t40 == pytest.approx(np.exp(-mu_eff * 40.0), rel=0.06)
    assert t40 > t20**2  # the beam hardens: the second 20 mm attenuates less than the first
    mus = [-np.log(_transmission(p, L)) / L for L in (10.0, 50.0, 100.0, 200.0)]
    assert all(a > b for a, b in itertools.pairwise(mus))


def test_bone_contrast_falls_with_kvp() -> None:
    contrasts = []
    for kvp in (55.0, 70.0, 90.0, 120.0):
        p = _params(kvp=kvp, filtration_mm_al=3.5)
        contrasts.append(np.log(_transmission(p, 100.0)) - np.log(_transmission(p, 100.0, 10.0)))
    assert all(a > b for a, b in itertools.pairwise(contrasts))
    assert contrasts[0] / contrasts[-1] > 1.3


# --- scatter and noise -------------------------------------------------------------------------------
def _quiet(**overrides: object) -> ExposureParams:
    quiet: dict[str, object] = {
        "heel_strength": 0.0,
        "blur_sigma_mm": 1e-6,
        "blur_tail_fraction": 0.0,
        "electronic_noise_quanta": 0.0,
        "line_noise_quanta": 0.0,
        "flat_field_corrected": True,
        "spr": 0.0,
    }
    return _params(**{**quiet, **overrides})


def test_uniform_slab_at_reference_thickness_has_the_sampled_spr() -> None:
    p0 = _quiet(fluence_per_mm2=1e10, spr_reference_mm=100.0)
    p1 = dataclasses.replace(p0, spr=0.8)
    slab = _slab(100.0, shape=(48, 48))
    a = simulate_detector(slab, 2.0, p0, np.random.default_rng(0)).signal
    b = simulate_detector(slab, 2.0, p1, np.random.default_rng(0)).signal
    assert float(b[20:28, 20:28].mean() / a[20:28, 20:28].mean()) == pytest.approx(1.8, rel=0.01)


def test_relative_noise_follows_one_over_sqrt_fluence() -> None:
    slab = _slab(50.0, shape=(128, 128))
    rel = []
    for fluence in (2e4, 8e4, 3.2e5):
        p = _quiet(fluence_per_mm2=fluence)
        sig = simulate_detector(slab, 1.0, p, np.random.default_rng(3)).signal
        rel.append(float(sig.std() / sig.mean()))
        s, q, _, _ = expected_signal(slab[:, :1, :1], p)
        n = fluence * 1.0
        expected = np.sqrt(float(q[0, 0]) / n) / float(s[0, 0])  # compound Poisson
        assert rel[-1] == pytest.approx(expected, rel=0.05)
    assert rel[0] / rel[1] == pytest.approx(2.0, rel=0.08)
    assert rel[1] / rel[2] == pytest.approx(2.0, rel=0.08)


def test_exposure_gain_is_more_photons_not_more_amplification() -> None:
    slab = _slab(50.0, shape=(128, 128))
    p = _quiet(fluence_per_mm2=5e4)
    base = simulate_detector(slab, 1.0, p, np.random.default_rng(1)).signal
    gain = np.full((128, 1), 4.0, np.float32)
    more = simulate_detector(slab, 1.0, p, np.random.default_rng(1), exposure_gain=gain).signal
    assert float(more.mean() / base.mean()) == pytest.approx(4.0, rel=0.01)
    rel_base, rel_more = base.std() / base.mean(), more.std() / more.mean()
    assert float(rel_base / rel_more) == pytest.approx(2.0, rel=0.08)


def test_uncorrected_detector_keeps_the_cos3_falloff() -> None:
    p = _quiet(sid_mm=1000.0, flat_field_corrected=False)
    f = falloff(1001, 3, 1.0, p)  # rows span +-500 mm about the central ray
    assert float(f[500, 1]) == pytest.approx(1.0)
    assert float(f[0, 1]) == pytest.approx(0.8**1.5, rel=1e-4)
    assert float(falloff(5, 5, 1.0, dataclasses.replace(p, flat_field_corrected=True)).min()) == 1.0


def test_low_counts_are_poisson_quantised() -> None:
    """Behind dense objects only a few quanta arrive: the noise stays Poisson, with variance = mean."""
    p = _quiet(fluence_per_mm2=20.0)
    raw = simulate_detector(_slab(0.0, shape=(256, 256)), 1.0, p, np.random.default_rng(2))
    _, _, s0, q0 = expected_signal(_slab(0.0, shape=(1, 1)), p)
    per = q0 / s0  # keV per equivalent quantum
    counts = raw.signal / per
    np.testing.assert_allclose(counts, np.rint(counts), atol=1e-3)
    neq = 20.0 * s0 * s0 / q0
    assert float(counts.mean()) == pytest.approx(neq, rel=0.02)
    assert float(counts.var()) == pytest.approx(neq, rel=0.05)


def test_line_noise_is_row_and_column_correlated() -> None:
    slab = _slab(0.0, shape=(200, 200))
    _, _, s0, q0 = expected_signal(slab[:, :1, :1], _quiet())
    per = q0 / s0
    spreads = []
    for line in (0.0, 10.0):
        p = _quiet(fluence_per_mm2=1000.0, line_noise_quanta=line)
        sig = simulate_detector(slab, 1.0, p, np.random.default_rng(4)).signal / per
        spreads.append(float(sig.mean(axis=1).std()))
    quantum = np.sqrt(1000.0 * s0 * s0 / q0) / np.sqrt(200)  # white noise averaged over a row
    assert spreads[0] == pytest.approx(quantum, rel=0.2)
    assert spreads[1] == pytest.approx(np.hypot(10.0, quantum), rel=0.2)


# --- rendering, determinism, encoding ----------------------------------------------------------------
def _leg(rows: int = 96, cols: int = 64) -> np.ndarray:
    x = (np.arange(cols) - cols / 2) * 1.0
    water = 2 * np.sqrt(np.clip(25.0**2 - x**2, 0, None))
    bone = 2 * np.sqrt(np.clip(8.0**2 - x**2, 0, None))
    p = np.zeros((3, rows, cols), np.float32)
    p[0] = water - bone
    p[1] = bone
    return p


def test_render_is_deterministic_in_seed_and_record() -> None:
    p = sample_exposure(np.random.default_rng(7), "longleg")
    a = render_film(_leg(), 1.0, p, seed=11)
    b = render_film(_leg(), 1.0, ExposureParams.from_dict(json.loads(json.dumps(p.to_dict()))), seed=11)
    c = render_film(_leg(), 1.0, p, seed=12)
    np.testing.assert_array_equal(a.pixels, b.pixels)
    assert not np.array_equal(a.pixels, c.pixels)
    assert a.pixels.dtype == np.uint16
    assert int(a.pixels.max()) <= 2**p.bits_stored - 1
    assert float(a.presentation.min()) >= 0.0 and float(a.presentation.max()) <= 1.0


def test_bone_is_brighter_than_soft_tissue_and_air_is_dark() -> None:
    p = _params(photometric="MONOCHROME2")
    film = render_film(_leg(), 1.0, p, seed=0)
    pres = film.presentation
    assert pres[:, 32].mean() > pres[:, 14].mean() > pres[:, 2].mean()


def test_monochrome1_is_the_inversion() -> None:
    p2 = _params(photometric="MONOCHROME2", bits_stored=14)
    p1 = dataclasses.replace(p2, photometric="MONOCHROME1")
    f2 = render_film(_leg(), 1.0, p2, seed=5)
    f1 = render_film(_leg(), 1.0, p1, seed=5)
    np.testing.assert_array_equal(f1.pixels.astype(np.int64), 2**14 - 1 - f2.pixels.astype(np.int64))
    assert f1.window_center == pytest.approx(2**14 - 1 - f2.window_center)
    np.testing.assert_allclose(f1.presentation, f2.presentation, atol=1e-6)
    assert f1.photometric == "MONOCHROME1"


@pytest.mark.parametrize("kind", KINDS)
def test_exposure_records_round_trip_through_json_and_stay_in_range(kind: str) -> None:
    rng = np.random.default_rng(42)
    for _ in range(20):
        p = sample_exposure(rng, kind)
        back = ExposureParams.from_dict(json.loads(json.dumps(p.to_dict())))
        assert back == p
        lo, hi = (70.0, 90.0) if kind == "longleg" else (55.0, 75.0)
        assert lo <= p.kvp <= hi
        assert 12 <= p.bits_stored <= 16
        assert 3.5 <= p.filtration_mm_al <= 5.0
    with pytest.raises(InputError):
        ExposureParams.from_dict({**p.to_dict(), "bogus": 1})
    with pytest.raises(InputError):
        sample_exposure(rng, "chest")


def test_bad_path_shape_is_rejected() -> None:
    with pytest.raises(InputError):
        render_film(np.zeros((2, 4, 4), np.float32), 1.0, _params(), seed=0)


def test_encode_uses_full_bit_depth() -> None:
    p = _params(bits_stored=12, photometric="MONOCHROME2")
    ramp = np.tile(np.linspace(0, 1, 256, dtype=np.float32), (4, 1))
    film = encode_film(ramp, 0.2, p)
    assert int(film.pixels.min()) == 0 and int(film.pixels.max()) == 4095


@pytest.mark.slow
def test_large_film_renders_in_chunks(tmp_path: Path) -> None:
    """A 3000 x 9000 long-leg film (0.15 mm) renders without exhausting memory; writes a preview."""
    rows, cols = 9000, 3000
    x = (np.arange(cols) - cols / 2) * 0.15
    p = np.zeros((3, rows, cols), np.float32)
    p[0] = 2 * np.sqrt(np.clip(70.0**2 - x**2, 0, None))
    p[1] = 2 * np.sqrt(np.clip(14.0**2 - x**2, 0, None))
    params = sample_exposure(np.random.default_rng(1), "longleg")
    film = render_film(p, 0.15, params, seed=1)
    assert film.pixels.shape == (rows, cols)
    log_img = log_normalise(simulate_detector(p[:, :64], 0.15, params, np.random.default_rng(0)))
    assert process_display(log_img, 0.15, params).shape == (64, cols)
    out = Path(os.environ.get("XR3D_PREVIEW_DIR", tmp_path))
    from PIL import Image

    Image.fromarray((film.presentation[::8, ::8] * 255).astype(np.uint8)).save(out / "longleg_physics.png")


@pytest.mark.parametrize("kvp", [80.00117, 70.0000001, 60.001, 81.999999])
def test_spectrum_near_bin_edges_stays_in_table_range(kvp: float) -> None:
    # Regression: a kVp just above an even bin edge once produced an empty bin at 0 keV.
    from export.simulator.spectra import tungsten_spectrum

    spec = tungsten_spectrum(kvp, 3.0)
    assert np.all(spec.energies_kev >= 10.0)
    assert np.isclose(spec.photons.sum(), 1.0)
