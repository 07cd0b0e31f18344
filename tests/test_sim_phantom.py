"""Phantom realism and determinism: HU ranges, partial-volume edges, mirror symmetry, replay by seed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from export.simulator import labels
from export.simulator.assembly import build_limb
from export.simulator.case import CaseOptions, generate_case, sample_case
from export.simulator.params import neutral_params
from export.simulator.voxelize import Grid, Materials, voxelize

MAT = Materials(
    cortical=1700.0,
    trabecular=280.0,
    trabecular_noise=90.0,
    marrow=-20.0,
    muscle=48.0,
    fat=-100.0,
    skin=45.0,
    sclerosis=500.0,
)
TINY = CaseOptions(
    views=("knee-ap", "knee-lat"),
    write_ct=False,
    knee_pitch=0.8,
    leg_spacing=2.5,
    knee_spacing=1.25,
    preview_max_px=300,
)


def _knee_grid(side: str, spacing: float = 1.0) -> tuple[Grid, np.ndarray]:
    limb = build_limb(neutral_params(side))
    c = limb.landmarks()["FKC"]
    lo = c - np.array([70.0, 70.0, 60.0])
    return Grid.covering(lo, lo + np.array([140.0, 140.0, 120.0]), spacing), c


def test_tissue_hu_are_realistic() -> None:
    grid, _ = _knee_grid("right")
    vox = voxelize(build_limb(neutral_params("right")), grid, MAT)
    hu, lab = vox.hu.data.astype(float), vox.labels.data
    femur = hu[lab == labels.FEMUR]
    # Cortical shell present and within the clinical range; cancellous core in its range.
    assert 1000 <= np.percentile(femur, 99) <= 1900
    assert 150 <= np.median(femur) <= 450
    soft = hu[lab == labels.SOFT_TISSUE]
    assert np.percentile(soft, 5) < -60  # subcutaneous fat
    assert 25 <= np.median(soft) <= 70  # muscle dominates
    assert np.all(hu[lab == labels.AIR] < -450)  # air, or skin voxels less than half occupied
    for name in (labels.FEMUR, labels.TIBIA, labels.FIBULA, labels.PATELLA):
        assert np.count_nonzero(lab == name) > 1000, labels.NAMES[name]


def test_bone_edges_have_partial_volume_not_staircase() -> None:
    grid, _ = _knee_grid("right", spacing=1.0)
    vox = voxelize(build_limb(neutral_params("right")), grid, MAT, soft_tissue=False)
    hu = vox.hu.data.astype(float)
    # Between air (-1000) and cortex (>1000) a smooth edge leaves many intermediate voxels.
    edge = np.count_nonzero((hu > -900) & (hu < 300))
    bone = np.count_nonzero(hu > 300)
    assert edge > 0.1 * bone


def test_left_volume_is_mirror_of_right() -> None:
    limb_r = build_limb(neutral_params("right"))
    limb_l = build_limb(neutral_params("left"))
    c = limb_r.landmarks()["FKC"]
    lo_r = c - np.array([40.0, 40.0, 40.0])
    g_r = Grid(tuple(lo_r), 2.0, (41, 41, 41))  # type: ignore[arg-type]
    # The mirrored grid: x -> -x, so index i of the left grid is index 40 - i of the right grid.
    lo_l = np.array([-(lo_r[0] + 80.0), lo_r[1], lo_r[2]])
    g_l = Grid(tuple(lo_l), 2.0, (41, 41, 41))  # type: ignore[arg-type]
    v_r = voxelize(limb_r, g_r, MAT).hu.data
    v_l = voxelize(limb_l, g_l, MAT).hu.data
    np.testing.assert_array_equal(v_l, v_r[::-1])


def test_same_seed_same_case(tmp_path: Path) -> None:
    a = generate_case(900_321, tmp_path / "a", TINY)
    b = generate_case(900_321, tmp_path / "b", TINY)
    ta = json.loads((a / "truth.json").read_text())
    tb = json.loads((b / "truth.json").read_text())
    ta.pop("timing_s")
    tb.pop("timing_s")
    assert ta == tb
    for name in ("knee_ap.dcm", "knee_lat.dcm"):
        pa = pydicom.dcmread(a / name).pixel_array
        pb = pydicom.dcmread(b / name).pixel_array
        np.testing.assert_array_equal(pa, pb)
    assert sample_case(900_321, TINY) == sample_case(900_321, TINY)
    assert sample_case(900_322, TINY).params != sample_case(900_321, TINY).params


def test_cli_writes_cases_and_rejects_bad_arguments(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "xr3d"
    bad = subprocess.run(
        [str(exe), "simulate", "--n", "1", "--seed", "1", "--out", str(tmp_path), "--views", "chest"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "bad_view" in bad.stderr
    ok = subprocess.run(
        [
            str(exe),
            "simulate",
            "--n",
            "1",
            "--seed",
            "900400",
            "--out",
            str(tmp_path),
            "--views",
            "knee-ap",
            "--no-ct",
            "--knee-pitch",
            "0.8",
            "--leg-spacing",
            "2.5",
            "--knee-spacing",
            "1.25",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "case_900400" / "knee_ap.dcm").is_file()
    assert "case_900400" in ok.stdout
    assert not list(tmp_path.glob(".case_*"))


@pytest.mark.parametrize("seed", range(900_500, 900_540))
def test_sampled_limbs_build_and_stay_plausible(seed: int) -> None:
    rec = sample_case(seed, CaseOptions())
    limb = build_limb(rec.params)
    L = limb.landmarks()
    femur = np.linalg.norm(L["FHC"] - L["FKC"])
    tibia = np.linalg.norm(L["TKC"] - L["AC"])
    assert 330 < femur < 520 and 280 < tibia < 460
    # Knee below hip, ankle below knee, tibia just below the femur at the joint.
    assert L["FHC"][2] > L["FKC"][2] > L["AC"][2]
    assert 0 < L["FKC"][2] - L["TKC"][2] < 12


@pytest.mark.parametrize("implant", ["tka", "plate", "hip_stem"])
def test_implants_are_metal_and_leave_landmarks_unchanged(implant: str) -> None:
    plain = build_limb(neutral_params("left"))
    limb = build_limb(neutral_params("left", implant=implant))
    for name, point in plain.landmarks().items():
        np.testing.assert_allclose(limb.landmarks()[name], point, atol=1e-9)
    L = limb.landmarks()
    hip = implant == "hip_stem"
    centre = L["FHC"] + np.array([0.0, 0.0, -50.0]) if hip else L["FKC"] + np.array([0.0, 0.0, 40.0])
    lo = centre - np.array([60.0, 60.0, 70.0])
    grid = Grid(tuple(lo), 2.0, (61, 61, 71))  # type: ignore[arg-type]
    vox = voxelize(limb, grid, MAT, soft_tissue=False)
    metal = vox.labels.data == labels.METAL
    assert metal.sum() > 200
    assert np.median(vox.hu.data[metal]) > 2800  # saturated as in real CT; edges partial-volume
    assert np.all(vox.hu.data[metal] > 1000)
    assert vox.metal.data.max() == pytest.approx(1.0)


def test_sclerosis_densifies_the_narrowed_compartment() -> None:
    base = neutral_params("right", JLCA=3.0)  # medial narrowing
    plain = build_limb(base)
    dense = build_limb(base.replace(sclerosis=True))
    tkc = plain.landmarks()["TKC"]
    mtp = plain.landmarks()["MTP"]
    # A small box just under the medial plateau, between the edge and the spines.
    centre = 0.5 * (tkc + mtp) + np.array([0.0, 0.0, -6.0])
    grid = Grid(tuple(centre - 6.0), 1.0, (13, 13, 13))  # type: ignore[arg-type]
    a = voxelize(plain, grid, MAT, soft_tissue=False).hu.data.astype(float).mean()
    b = voxelize(dense, grid, MAT, soft_tissue=False).hu.data.astype(float).mean()
    assert b > a + 100


def test_sampler_covers_all_cpak_types_and_the_alignment_range() -> None:
    from appliance.analytics.cpak import cpak_type
    from export.simulator.params import sample_params

    rng = np.random.default_rng(2024)
    ps = [sample_params(rng) for _ in range(3000)]
    types = {cpak_type(p.aHKA, p.JLO).type for p in ps}
    assert types == set(range(1, 10))
    mhka = np.array([p.mHKA for p in ps])
    assert mhka.min() <= -12.0 and mhka.max() >= 9.0
    assert all(80.0 <= p.mLDFA <= 96.0 and 80.0 <= p.MPTA <= 96.0 and abs(p.JLCA) <= 6.0 for p in ps)
    assert {p.side for p in ps} == {"left", "right"}
    assert max(abs(p.rotation) for p in ps) > 19.0 and max(p.flexion for p in ps) > 14.0
