"""appliance.recon checks and outputs on an analytic knee phantom (tests/test_recon_checks_phantom.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from appliance.analytics.angles3d import measure_3d
from appliance.errors import InputError
from appliance.geometry.volume import Volume
from appliance.recon.bones3d import LongLegLandmarks, landmarks_from_labels
from appliance.recon.consistency import (
    CORTICAL_BONE_HU,
    MU_BONE_PER_MM,
    MU_WATER_PER_MM,
    ConsistencySettings,
    check_consistency,
    gradient_correlation,
    hu_to_mu,
    judge,
)
from appliance.recon.meshes import label_surface, read_ply, read_stl, write_ply, write_stl
from appliance.recon.nifti import load_volume
from appliance.recon.slices import knee_centre, write_slices_png
from appliance.recon.study import ReconSettings, reconstruct_study
from appliance.recon.types import FilmView
from tests.test_recon_checks_phantom import (
    Phantom,
    build_phantom,
    film_of,
    knee_geometries,
    longleg_geometry,
)

CONTRACT_CONSISTENCY_KEYS = {"score", "threshold", "per_view", "registration_residual_mm", "consistent"}


@pytest.fixture(scope="module")
def phantom() -> Phantom:
    return build_phantom()


@pytest.fixture(scope="module")
def films(phantom: Phantom) -> dict[str, FilmView]:
    return {v: film_of(phantom.recon, g, seed=i) for i, (v, g) in enumerate(knee_geometries().items())}


def test_hu_to_mu_follows_the_two_component_model() -> None:
    mu = hu_to_mu(np.array([-1000.0, 0.0, 100.0, CORTICAL_BONE_HU, 2000.0]))
    assert mu[0] == pytest.approx(0.0)
    assert mu[1] == pytest.approx(MU_WATER_PER_MM)
    assert mu[3] == pytest.approx(MU_BONE_PER_MM, rel=1e-5)
    assert np.all(np.diff(mu) > 0)


def test_gradient_correlation_ignores_monotone_film_processing(films: dict[str, FilmView]) -> None:
    img = films["knee_ap"].image.astype(np.float64)
    region = np.ones(img.shape, dtype=bool)
    assert gradient_correlation(img, 3.0 * img + 1.0, region, 1.0) == pytest.approx(1.0)
    assert gradient_correlation(img, np.sqrt(img), region, 1.0) > 0.8
    assert gradient_correlation(img, np.roll(img, 10, axis=(0, 1)), region, 1.0) < 0.5


def test_truth_is_consistent_and_corrupted_inputs_are_not(
    phantom: Phantom, films: dict[str, FilmView]
) -> None:
    good = check_consistency(phantom.recon, list(films.values()), registration_residual_mm=0.0)
    assert good.consistent
    assert good.score >= good.threshold
    assert set(good.to_dict()) == CONTRACT_CONSISTENCY_KEYS
    assert set(good.per_view) == {"knee_ap", "knee_lat"}

    other = build_phantom(
        condyle_radius=18.0, condyle_drop_mm=-2.0, plateau_tilt_deg=-4.0, offset_mm=(4, 0, 3)
    )
    other_films = {v: film_of(other.recon, g) for v, g in knee_geometries().items()}
    # The lateral film of another "patient" with this patient's AP: the lateral view fails.
    mixed = check_consistency(phantom.recon, [films["knee_ap"], other_films["knee_lat"]], 0.0)
    assert not mixed.consistent
    assert mixed.per_view["knee_lat"] < mixed.per_view["knee_ap"]
    shifted = build_phantom(offset_mm=(0.0, 0.0, 6.0))
    assert not check_consistency(shifted.recon, list(films.values()), 0.0).consistent


def test_a_large_registration_correction_fails_the_check() -> None:
    s = ConsistencySettings()
    assert judge({"knee_ap": 0.99}, s.max_residual_mm - 0.1, s).consistent
    verdict = judge({"knee_ap": 0.99}, s.max_residual_mm + 0.1, s)
    assert not verdict.consistent
    assert verdict.registration_residual_mm == pytest.approx(s.max_residual_mm + 0.1)


def test_meshes_are_in_patient_mm_with_outward_faces(tmp_path: Path) -> None:
    # A flipped, anisotropic grid: the sphere must still come out at its LPS centre and radius.
    affine = np.array([[-0.8, 0, 0, 30.0], [0, 0.9, 0, -20.0], [0, 0, -1.0, 100.0], [0, 0, 0, 1]])
    n = 70
    vol = Volume(np.zeros((n, n, n), dtype=np.uint8), affine)
    centre = np.array([5.0, 10.0, 70.0])
    idx = np.argwhere(np.ones((n, n, n), dtype=bool))
    inside = np.linalg.norm(vol.index_to_mm(idx) - centre, axis=1) <= 18.0
    data = np.zeros(n**3, dtype=np.uint8)
    data[inside] = 1
    vol = Volume(data.reshape(n, n, n), affine)
    mesh = label_surface(vol, 1)
    assert mesh is not None
    radii = np.linalg.norm(mesh.vertices - centre, axis=1)
    assert abs(float(radii.mean()) - 18.0) < 0.5
    assert mesh.volume_mm3() == pytest.approx(4.0 / 3.0 * np.pi * 18.0**3, rel=0.05)
    outward = np.einsum("ij,ij->i", mesh.face_normals(), mesh.vertices[mesh.faces].mean(axis=1) - centre)
    assert np.mean(outward > 0) > 0.99
    write_stl(mesh, tmp_path / "s.stl")
    write_ply(mesh, tmp_path / "s.ply")
    stl = read_stl(tmp_path / "s.stl")
    ply = read_ply(tmp_path / "s.ply")
    assert len(stl.faces) == len(mesh.faces)
    assert np.allclose(ply.vertices, mesh.vertices, atol=1e-3)
    assert np.array_equal(ply.faces, mesh.faces)
    assert stl.volume_mm3() == pytest.approx(mesh.volume_mm3(), rel=1e-4)
    assert label_surface(vol, 3) is None


def test_slices_png_centres_on_the_joint(phantom: Phantom, tmp_path: Path) -> None:
    c = knee_centre(phantom.recon.labels)
    assert np.linalg.norm(c - np.array([0.0, 0.0, 0.0])) < 3.0
    path = tmp_path / "slices.png"
    write_slices_png(phantom.recon.volume, phantom.recon.labels, path)
    img = np.asarray(Image.open(path).convert("RGB"))
    assert img.shape[1] > img.shape[0] > 200
    # Femur outline colour (orange) is drawn.
    assert np.any((img[..., 0] > 200) & (img[..., 1] > 60) & (img[..., 1] < 110) & (img[..., 2] < 40))


def _longleg(phantom: Phantom) -> LongLegLandmarks:
    g = longleg_geometry()
    p = g.project(np.array([phantom.landmarks["FHC"], phantom.landmarks["AC"]]))
    return LongLegLandmarks(g, (float(p[0, 0]), float(p[0, 1])), (float(p[1, 0]), float(p[1, 1])))


def test_3d_landmarks_and_angles_match_the_phantom(phantom: Phantom) -> None:
    got = landmarks_from_labels(phantom.recon.labels, phantom.side, _longleg(phantom))
    for name in ("MDFC", "LDFC", "MPC", "LPC", "MTP", "LTP", "FKC", "TKC", "FHC", "AC"):
        err = np.linalg.norm(np.asarray(got.points[name]) - phantom.landmarks[name])
        assert err < 1.0, (name, err)
    truth = measure_3d({k: v.tolist() for k, v in phantom.landmarks.items()}, side="R")
    for key in ("mHKA", "mLDFA", "MPTA", "JLCA"):
        assert got.angles.value(key) == pytest.approx(truth.value(key), abs=1.0), key
    with pytest.raises(InputError):
        landmarks_from_labels(phantom.recon.labels, "", _longleg(phantom))


def test_reconstruct_study_writes_the_contract(
    phantom: Phantom, films: dict[str, FilmView], tmp_path: Path
) -> None:
    ll = longleg_geometry()
    marks = _longleg(phantom)
    inputs: dict[str, Path | FilmView] = {
        **films,
        "longleg_ap": FilmView("longleg_ap", np.zeros((ll.rows, ll.columns), np.float32), ll),
    }
    landmarks_2d = {
        "longleg_ap": {
            "FHC": {"col": marks.fhc_px[0], "row": marks.fhc_px[1], "confidence": 0.9},
            "AC": {"col": marks.ac_px[0], "row": marks.ac_px[1], "confidence": 0.9},
        }
    }
    calls: list[tuple[str, ...]] = []

    def reconstructor(views: object) -> object:
        calls.append(tuple(views))  # type: ignore[arg-type]
        return phantom.recon

    out = reconstruct_study(
        inputs,
        tmp_path,
        side="R",
        landmarks_2d=landmarks_2d,
        reconstructor=reconstructor,  # type: ignore[arg-type]
        settings=ReconSettings(register=False),
    )
    assert calls == [("knee_ap", "knee_lat")]  # the long-leg film is not a reconstruction input
    doc = json.loads(json.dumps(out.to_json()))
    rec = doc["reconstruction"]
    assert set(rec) == {
        "model",
        "views_used",
        "spacing_mm",
        "shape",
        "consistency",
        "geometry",
        "knee_axial_rotation_deg",
        "files",
    }
    assert rec["knee_axial_rotation_deg"] is None  # the phantom's reconstructor works in the patient frame
    assert rec["geometry"] is None  # FilmViews given directly: their geometries are the caller's
    assert rec["views_used"] == ["knee_ap", "knee_lat"]
    assert rec["spacing_mm"] == 1.0
    assert rec["shape"] == list(phantom.recon.volume.shape)
    assert rec["consistency"]["consistent"] is True
    for f in (
        "recon/volume.nii.gz",
        "recon/labels.nii.gz",
        "recon/femur.stl",
        "recon/tibia.ply",
        "recon/slices.png",
    ):
        assert f in rec["files"]
        assert (tmp_path / f).is_file()
    assert "recon/fibula.stl" not in rec["files"]  # the phantom has no fibula
    for view in ("knee_ap", "knee_lat"):
        png = Image.open(tmp_path / f"recon/reprojection_{view}.png")
        assert png.width > 2 * png.height * 0.9  # film | DRR side by side
    labels = load_volume(tmp_path / "recon/labels.nii.gz")
    assert np.array_equal(np.asarray(labels.data), np.asarray(phantom.recon.labels.data))
    assert np.allclose(labels.affine, phantom.recon.labels.affine)
    hu = load_volume(tmp_path / "recon/volume.nii.gz")
    assert np.asarray(hu.data).dtype == np.int16
    assert doc["angles_3d"]["mLDFA"] == pytest.approx(
        measure_3d({k: v.tolist() for k, v in phantom.landmarks.items()}, side="R").mldfa, abs=1.0
    )
    assert set(doc["landmarks_3d"]) >= {"FHC", "FKC", "MDFC", "LDFC", "MTP", "LTP", "TKC", "AC"}


def test_without_a_lateral_film_there_are_no_3d_angles(
    phantom: Phantom, films: dict[str, FilmView], tmp_path: Path
) -> None:
    out = reconstruct_study(
        {"knee_ap": films["knee_ap"]},
        tmp_path,
        side="R",
        reconstructor=lambda views: phantom.recon,
        settings=ReconSettings(register=False),
    )
    assert out.angles_3d is None and out.landmarks_3d is None
    assert out.to_json()["reconstruction"]["views_used"] == ["knee_ap"]
    assert any("lateral" in n for n in out.notes)
    with pytest.raises(InputError):
        reconstruct_study({}, tmp_path, reconstructor=lambda views: phantom.recon)


def test_runtime_modules_do_not_import_torch_or_export() -> None:
    code = (
        "import sys, appliance.recon.study, appliance.recon.register, appliance.recon.bones3d;"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'export')];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stdout + res.stderr


def test_a_lateral_film_without_long_leg_gives_knee_landmarks_only(
    phantom: Phantom, films: dict[str, FilmView], tmp_path: Path
) -> None:
    out = reconstruct_study(
        dict(films),
        tmp_path,
        side="R",
        reconstructor=lambda views: phantom.recon,
        settings=ReconSettings(register=False),
    )
    assert out.angles_3d is not None and out.landmarks_3d is not None
    assert out.angles_3d["mHKA"] is None and out.angles_3d["mLDFA"] is None  # need FHC / AC
    assert "FHC" not in out.landmarks_3d and "AC" not in out.landmarks_3d
    for name in ("MDFC", "LDFC", "MTP", "LTP"):
        err = np.linalg.norm(np.asarray(out.landmarks_3d[name]) - phantom.landmarks[name])
        assert err < 1.0, (name, err)


def test_the_configured_models_reconstruct_and_report_the_knee_rotation(films: dict[str, FilmView]) -> None:
    """The service's reconstructor for a configured models folder (``pipeline.models_dir``) runs the real
    network and carries what it reports; a knee-canonical model's rotation estimate reaches the study."""
    from appliance.pipeline.study import _network_in
    from appliance.recon.infer import DECODER_MODEL, DEFAULT_MODELS_DIR, FRAME_CANONICAL, FRAME_META
    from engines.config import EngineConfig
    from engines.ort_backend import OrtBackend

    if not (DEFAULT_MODELS_DIR / DECODER_MODEL).is_file():
        pytest.skip("no shipped reconstruction model")
    dec = OrtBackend(DEFAULT_MODELS_DIR / DECODER_MODEL, EngineConfig(cpu_threads=1), device="cpu")
    try:
        version, frame = dec.info.version, dict(dec.info.metadata).get(FRAME_META)
    finally:
        dec.close()
    rec = _network_in(DEFAULT_MODELS_DIR)(films)
    assert rec.model == version
    assert rec.volume.shape == rec.labels.shape and int(np.asarray(rec.labels.data).max()) > 0
    if frame == FRAME_CANONICAL:
        assert rec.axial_deg is not None and -45.0 < rec.axial_deg < 45.0
    else:
        assert rec.axial_deg is None
