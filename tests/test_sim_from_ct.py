"""Films from a real CT: a synthetic knee CT written as NIfTI and as a DICOM CT series, rendered through
the simulator's projector, physics, artefacts and DICOM writer."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.valuerep import DSfloat

from appliance.cli.main import main as xr3d_main
from appliance.dicomio.ct_series import CT_IMAGE_STORAGE
from appliance.dicomio.uids import uid_from
from appliance.errors import InputError
from appliance.geometry.volume import Volume
from export.simulator import from_ct
from export.simulator.ct_io import save_nifti
from tests.dicom_validate import dciodvfy_errors

SPACING = 1.5
SHAPE = (100, 100, 120)  # 150 x 150 x 180 mm
ORIGIN = np.array([-60.0, -80.0, 400.0])  # LPS of voxel (0, 0, 0)
CENTRE_XY = (ORIGIN[0] + 49.5 * SPACING, ORIGIN[1] + 45.0 * SPACING)
GAP_Z = ORIGIN[2] + 60.0 * SPACING  # middle of the knee gap
HALF_GAP = 4.0  # mm: the bone cylinders end 4 mm above and below GAP_Z
BONE_R, LEG_R = 14.0, 55.0
PATIENT_NAME = "Testperson^Secret"  # must never reach the films
FAST_PITCH = {"knee-ap": 0.5, "knee-lat": 0.5}


def knee_hu(shape: tuple[int, int, int] = SHAPE, origin: np.ndarray = ORIGIN) -> np.ndarray:
    """Water-like leg with two bone cylinders and a joint gap, a CT table behind it, padding in the
    corners (-3024 HU, outside the reconstruction circle)."""
    i, j, k = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    x, y, z = (origin[a] + idx * SPACING for a, idx in enumerate((i, j, k)))
    r = np.hypot(x - CENTRE_XY[0], y - CENTRE_XY[1])
    hu = np.full(shape, -1000.0, np.float32)
    hu[r < LEG_R] = 40.0
    bone = r < BONE_R
    hu[bone & (z > GAP_Z + HALF_GAP)] = 1200.0
    hu[bone & (z < GAP_Z - HALF_GAP)] = 1200.0
    hu[(y > CENTRE_XY[1] + 62.0) & (y < CENTRE_XY[1] + 68.0)] = 200.0  # the couch
    hu[np.hypot(x - CENTRE_XY[0], y - ORIGIN[1] - 74.25) > 74.0] = -3024.0
    return hu


def affine(origin: np.ndarray = ORIGIN) -> np.ndarray:
    a = np.eye(4)
    a[:3, :3] = np.diag([SPACING] * 3)
    a[:3, 3] = origin
    return a


def landmarks() -> dict[str, list[float]]:
    cx, cy = CENTRE_XY
    return {"FKC": [cx, cy, GAP_Z + HALF_GAP], "TKC": [cx, cy, GAP_Z - HALF_GAP], "KNEE_GAP": [cx, cy, GAP_Z]}


def write_nifti_flipped(hu: np.ndarray, path: Path) -> None:
    """The same CT with its first two axes reversed (as many RAS-native NIfTIs store it)."""
    a = affine()
    flip = np.eye(4)
    flip[0, 0] = flip[1, 1] = -1.0
    flip[0, 3] = hu.shape[0] - 1
    flip[1, 3] = hu.shape[1] - 1
    save_nifti(Volume(data=hu[::-1, ::-1, :].copy(), affine=a @ flip), path, dtype=np.int16)


def _ds(v: float) -> DSfloat:
    return DSfloat(float(v), auto_format=True)


def write_dicom_series(hu: np.ndarray, folder: Path, origin: np.ndarray = ORIGIN) -> None:
    """One axial CT slice per file; instance numbers run head to foot and file names are shuffled."""
    folder.mkdir(parents=True)
    nk = hu.shape[2]
    order = np.random.default_rng(5).permutation(nk)
    for n, k in enumerate(order):
        k = int(k)
        d = Dataset()
        d.SpecificCharacterSet = "ISO_IR 100"
        d.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        d.SOPClassUID = CT_IMAGE_STORAGE
        d.SOPInstanceUID = uid_from("from-ct-test", "slice", str(k))
        d.StudyDate = "20260110"
        d.StudyTime = "120000"
        d.AccessionNumber = ""
        d.Modality = "CT"
        d.Manufacturer = "xr3d tests"
        d.ReferringPhysicianName = ""
        d.PatientName = PATIENT_NAME
        d.PatientID = "ID-SECRET-1"
        d.PatientBirthDate = "19500101"
        d.PatientSex = "O"
        d.KVP = _ds(120)
        d.SliceThickness = _ds(SPACING)
        d.StudyInstanceUID = uid_from("from-ct-test", "study")
        d.SeriesInstanceUID = uid_from("from-ct-test", "series")
        d.StudyID = "1"
        d.SeriesNumber = 2
        d.PatientPosition = "FFS"
        d.InstanceNumber = nk - k
        d.ImagePositionPatient = [_ds(v) for v in origin + np.array([0.0, 0.0, k * SPACING])]
        d.ImageOrientationPatient = [_ds(v) for v in (1, 0, 0, 0, 1, 0)]
        d.FrameOfReferenceUID = uid_from("from-ct-test", "for")
        d.PositionReferenceIndicator = ""
        d.SamplesPerPixel = 1
        d.PhotometricInterpretation = "MONOCHROME2"
        d.Rows = hu.shape[1]
        d.Columns = hu.shape[0]
        d.PixelSpacing = [_ds(SPACING), _ds(SPACING)]
        d.BitsAllocated = 16
        d.BitsStored = 16
        d.HighBit = 15
        d.PixelRepresentation = 1
        d.RescaleIntercept = _ds(-1024)
        d.RescaleSlope = _ds(1)
        d.RescaleType = "HU"
        d.AcquisitionNumber = 1
        # Rows run along j (y), columns along i (x).
        d.PixelData = np.ascontiguousarray(hu[:, :, k].T + 1024.0).astype("<i2").tobytes()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = d.SOPClassUID
        meta.MediaStorageSOPInstanceUID = d.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        d.file_meta = meta
        d.save_as(folder / f"slice_{n:03d}.dcm", enforce_file_format=True)


@dataclass(frozen=True)
class Inputs:
    nifti: Path
    dicom: Path
    landmarks: Path
    hu: np.ndarray


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Inputs:
    root = tmp_path_factory.mktemp("ct_inputs")
    hu = knee_hu()
    write_nifti_flipped(hu, root / "knee_ct.nii.gz")
    write_dicom_series(hu, root / "series")
    (root / "landmarks.json").write_text(
        json.dumps({"coordinate_system": "LPS", "landmarks_3d": landmarks()})
    )
    return Inputs(root / "knee_ct.nii.gz", root / "series", root / "landmarks.json", hu)


@pytest.fixture(scope="module")
def rendered(inputs: Inputs, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = {}
    for kind, path in (("nifti", inputs.nifti), ("dicom", inputs.dicom)):
        out[kind] = from_ct.render_from_ct(
            path,
            tmp_path_factory.mktemp(f"out_{kind}"),
            seed=11,
            views=("knee-ap", "knee-lat"),
            side="left",
            landmarks_path=inputs.landmarks,
            pitch_mm=FAST_PITCH,
        )
    return out


def truth_of(folder: Path) -> dict:  # type: ignore[type-arg]
    return json.loads((folder / "truth.json").read_text())


# --- the written case ------------------------------------------------------------------------------------
def test_films_are_written_valid_and_anonymous(rendered: dict[str, Path], inputs: Inputs) -> None:
    for kind, folder in rendered.items():
        names = sorted(p.name for p in folder.iterdir())
        assert names == ["knee_ap.dcm", "knee_ap.png", "knee_lat.dcm", "knee_lat.png", "truth.json"]
        assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")], "temporary folder left"
        for film in ("knee_ap.dcm", "knee_lat.dcm"):
            assert dciodvfy_errors(folder / film) == [], (kind, film)
            ds = pydicom.dcmread(folder / film)
            assert ds.Modality == "DX" and ds.ImageLaterality == "L"
            assert "DERIVED" in ds.ImageType
            assert str(ds.PatientName).startswith("SIM^") and "Secret" not in str(ds.PatientName)
            assert "SECRET" not in str(ds.PatientID) and ds.PatientBirthDate == ""
        text = (folder / "truth.json").read_text()
        assert "Secret" not in text and str(inputs.nifti.parent) not in text


def test_truth_says_ct_and_carries_records(rendered: dict[str, Path]) -> None:
    t = truth_of(rendered["nifti"])
    assert t["source"] == "ct" and t["ct_file"] == "knee_ct.nii.gz"
    assert truth_of(rendered["dicom"])["ct_file"] == "series"
    assert (
        t["angles_3d"] is None and t["construction"] is None and "no simulated-anatomy" in t["anatomy_truth"]
    )
    assert t["side"] == "left" and t["knee_centre_from"] == "landmarks"
    np.testing.assert_allclose(t["knee_centre_mm"], [*CENTRE_XY, GAP_Z], atol=1e-6)
    assert set(t["landmarks_3d"]) == {"FKC", "TKC", "KNEE_GAP"}
    for name, film in t["films"].items():
        for key in (
            "file",
            "preview",
            "geometry",
            "pixel_spacing_mm",
            "magnification",
            "exposure",
            "artifacts",
        ):
            assert key in film, (name, key)
        assert isinstance(film["noise_seed"], int) and film["sop_instance_uid"].startswith("2.25.")
        assert set(film["landmarks_projected"]) == {"FKC", "TKC", "KNEE_GAP"}
        assert all(film["in_field"].values())
        assert film["ct_covers_field_height"] is False  # 180 mm of CT under a 300 mm cassette
        ds = pydicom.dcmread(rendered["nifti"] / film["file"])
        assert (ds.Rows, ds.Columns) == (film["rows"], film["columns"])
        assert ds.SOPInstanceUID == film["sop_instance_uid"]
        assert ds.StudyInstanceUID == t["study_instance_uid"]
        assert film["exposure"]["sid_mm"] == pytest.approx(film["geometry"]["sid_mm"])
    # Lateral film of a left knee: the beam runs medial -> lateral, i.e. toward +x (patient left).
    lat = t["films"]["knee_lat"]["geometry"]
    assert np.cross(lat["u_dir"], lat["v_dir"]) @ [1.0, 0.0, 0.0] > 0.99
    assert lat["source_mm"][0] < CENTRE_XY[0] - 500.0


# --- NIfTI and DICOM agree ------------------------------------------------------------------------------
def test_nifti_and_dicom_give_the_same_films(rendered: dict[str, Path], inputs: Inputs) -> None:
    tn, td = truth_of(rendered["nifti"]), truth_of(rendered["dicom"])
    for name in ("knee_ap", "knee_lat"):
        fn, fd = tn["films"][name], td["films"][name]
        for lmk, p in fn["landmarks_projected"].items():
            np.testing.assert_allclose(p, fd["landmarks_projected"][lmk], atol=1e-3)
        np.testing.assert_allclose(fn["geometry"]["matrix_3x4"], fd["geometry"]["matrix_3x4"], atol=1e-6)
        a = pydicom.dcmread(rendered["nifti"] / fn["file"]).pixel_array.astype(np.float64)
        b = pydicom.dcmread(rendered["dicom"] / fd["file"]).pixel_array.astype(np.float64)
        assert a.shape == b.shape
        assert np.mean(np.abs(a - b)) <= 1e-3 * (2 ** fn["bits_stored"])

    scenes = [from_ct.prepare_ct(p, landmarks_path=inputs.landmarks) for p in (inputs.nifti, inputs.dicom)]
    for s in scenes:
        assert float(s.volume.data.min()) == from_ct.HU_FLOOR  # -3024 padding clipped
    plans = [from_ct.plan_films(s, seed=4, views=("knee-ap", "knee-lat"), side="left") for s in scenes]
    for view in ("knee-ap", "knee-lat"):
        g = plans[0][view].geometry
        assert g == plans[1][view].geometry
        coarse = g.binned(4)
        pa = from_ct.ct_path_images(scenes[0], coarse)
        pb = from_ct.ct_path_images(scenes[1], coarse)
        assert pa[1].max() > 15.0  # the bone is in the picture
        np.testing.assert_allclose(pa, pb, atol=0.02)


def test_slabs_join_without_seams(inputs: Inputs) -> None:
    scene = from_ct.prepare_ct(inputs.nifti, landmarks_path=inputs.landmarks)
    g = from_ct.plan_films(scene, seed=2, views=("knee-ap",), side="left")["knee-ap"].geometry.binned(4)
    whole = from_ct.ct_path_images(scene, g, slab=1000)
    thin = from_ct.ct_path_images(scene, g, slab=7)
    np.testing.assert_allclose(thin, whole, atol=0.05)


# --- landmarks land on the anatomy ------------------------------------------------------------------
def _bone_edges(profile: np.ndarray, near: float) -> tuple[float, float]:
    """Sub-pixel rows where the bone profile crosses half its maximum around the gap at row ``near``."""
    half = 0.5 * float(profile.max())
    r = round(near)
    assert profile[r] < half, "no gap at the projected knee centre"
    top = r
    while profile[top - 1] < half:
        top -= 1
    bottom = r
    while profile[bottom + 1] < half:
        bottom += 1

    def cross(a: int, b: int) -> float:  # linear interpolation between rows a (bone) and b (gap)
        return a + (profile[a] - half) / (profile[a] - profile[b]) * (b - a)

    return cross(top - 1, top), cross(bottom + 1, bottom)


@pytest.mark.parametrize("view", ["knee-ap", "knee-lat"])
def test_projected_landmarks_sit_on_the_bone_ends(inputs: Inputs, view: str) -> None:
    scene = from_ct.prepare_ct(inputs.dicom, landmarks_path=inputs.landmarks)
    plan = from_ct.plan_films(scene, seed=7, views=(view,), side="right", pitch_mm={view: 0.6})[view]
    g = plan.geometry
    paths = from_ct.ct_path_images(scene, g)
    proj = {n: g.project(p)[0] for n, p in scene.landmarks.items()}
    col = round(proj["KNEE_GAP"][0])
    profile = paths[1, :, col - 3 : col + 4].mean(axis=1)
    femur_end, tibia_end = _bone_edges(profile, proj["KNEE_GAP"][1])
    assert femur_end == pytest.approx(proj["FKC"][1], abs=1.0)
    assert tibia_end == pytest.approx(proj["TKC"][1], abs=1.0)
    assert 0.5 * (femur_end + tibia_end) == pytest.approx(proj["KNEE_GAP"][1], abs=0.5)
    # Across the film the bone is centred on the landmark's column.
    row = round(proj["FKC"][1] - 20)
    bone_cols = np.nonzero(paths[1, row] > 0.5 * paths[1, row].max())[0]
    assert 0.5 * (bone_cols[0] + bone_cols[-1]) == pytest.approx(proj["FKC"][0], abs=1.0)


def test_gap_is_at_the_projected_landmark_on_the_film(rendered: dict[str, Path]) -> None:
    t = truth_of(rendered["nifti"])
    for film in t["films"].values():
        ds = pydicom.dcmread(rendered["nifti"] / film["file"])
        img = ds.pixel_array.astype(np.float64)
        if film["photometric"] == "MONOCHROME1":
            img = img.max() - img  # bone bright
        gap = film["landmarks_projected"]["KNEE_GAP"]
        col = round(gap[0])
        profile = img[:, col - 8 : col + 9].mean(axis=1)
        r = round(gap[1])
        window = profile[r - 40 : r + 41]
        lo, hi = np.percentile(window, 5), np.percentile(window, 95)
        dark = np.nonzero(window < 0.5 * (lo + hi))[0] + (r - 40)
        run = dark[np.abs(dark - r) < 15]
        assert len(run) > 5
        assert 0.5 * (run.min() + run.max()) == pytest.approx(gap[1], abs=2.0)


# --- determinism ------------------------------------------------------------------------------------
def test_same_seed_same_films_other_seed_other_films(
    inputs: Inputs, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def run(seed: int, out: Path) -> Path:
        return from_ct.render_from_ct(
            inputs.nifti, out, seed=seed, views=("knee-ap",), side="right", pitch_mm={"knee-ap": 1.0}
        )

    with caplog.at_level(logging.WARNING, logger="export.simulator.from_ct"):
        a = run(5, tmp_path / "a")
    assert "middle of the CT volume" in caplog.text
    b = run(5, tmp_path / "b")
    assert a.name == b.name
    ta, tb = truth_of(a), truth_of(b)
    assert ta["knee_centre_from"] == "volume_centre" and ta["landmarks_3d"] is None
    ta.pop("timing_s")
    tb.pop("timing_s")
    assert ta == tb
    pa = pydicom.dcmread(a / "knee_ap.dcm").pixel_array
    np.testing.assert_array_equal(pa, pydicom.dcmread(b / "knee_ap.dcm").pixel_array)
    # Another seed: another acquisition.
    scene = from_ct.prepare_ct(inputs.nifti)
    p5, p6 = (from_ct.plan_films(scene, seed=s, views=("knee-ap",), side="right")["knee-ap"] for s in (5, 6))
    assert json.loads(json.dumps(p5.record.to_dict())) == ta["films"]["knee_ap"]["view_record"] | {
        "pitch_mm": 0.25
    }
    assert p5.exposure != p6.exposure and p5.geometry != p6.geometry and p5.noise_seed != p6.noise_seed


# --- table --------------------------------------------------------------------------------------------------
def test_remove_table_keeps_the_leg_only(inputs: Inputs) -> None:
    hu = np.maximum(inputs.hu, np.float32(-1024.0))
    cleaned = from_ct.remove_table_voxels(hu.copy())
    table = hu == 200.0
    assert table.any() and (cleaned[table] == -1000.0).all()
    body = hu == 40.0
    np.testing.assert_array_equal(cleaned[body | (hu == 1200.0)], hu[body | (hu == 1200.0)])
    scene = from_ct.prepare_ct(inputs.nifti, remove_table=True, knee_centre_mm=(*CENTRE_XY, GAP_Z))
    assert scene.table_removed and not (scene.volume.data == 200.0).any()
    _, hi = from_ct.body_box(scene, near_knee=True)
    assert hi[1] == pytest.approx(CENTRE_XY[1] + LEG_R, abs=2.0)  # the detector now meets the skin


def test_lateral_film_leaves_the_other_leg_out(tmp_path: Path) -> None:
    """Bilateral CT: on the left knee's lateral film only the left leg is in the beam."""
    shape, sp = (80, 40, 30), 4.0
    a = np.diag([sp, sp, sp, 1.0])
    a[:3, 3] = [-158.0, -78.0, 440.0]
    i, j = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    x, y = -158.0 + sp * i, -78.0 + sp * j
    both = np.full(shape, -1000.0, np.float32)
    for cx in (-90.0, 90.0):
        both[np.hypot(x - cx, y) < 50.0] = 40.0
    left_only = np.where((x > 0)[:, :, None], both, np.float32(-1000.0)).astype(np.float32)
    images = []
    for name, hu in (("both", both), ("left", left_only)):
        save_nifti(Volume(data=hu, affine=a), tmp_path / f"{name}.nii.gz", dtype=np.int16)
        scene = from_ct.prepare_ct(tmp_path / f"{name}.nii.gz", knee_centre_mm=(90.0, 0.0, 500.0))
        plan = from_ct.plan_films(scene, seed=1, views=("knee-lat",), side="left", pitch_mm={"knee-lat": 2.0})
        cut = from_ct._medial_cut(scene, "knee-lat", "left")
        images.append(from_ct.ct_path_images(scene, plan["knee-lat"].geometry, medial_cut=cut))
    assert images[0][0].max() == pytest.approx(100.0, abs=8.0)  # one leg's diameter of water
    np.testing.assert_allclose(images[0], images[1], atol=0.05)


# --- long-leg ---------------------------------------------------------------------------------------------
def _tall_ct(tmp_path: Path, slices: int) -> Path:
    """A thin leg (4 mm voxels) along z: hip ~ top, ankle ~ bottom."""
    n = (40, 40, slices)
    a = np.diag([4.0, 4.0, 4.0, 1.0])
    a[:3, 3] = [-78.0, -78.0, 0.0]
    i, j = np.meshgrid(np.arange(40), np.arange(40), indexing="ij")
    r = np.hypot(-78.0 + 4.0 * i, -78.0 + 4.0 * j)
    hu = np.full(n, -1000.0, np.float32)
    hu[r < 50.0] = 40.0
    hu[r < 12.0] = 1200.0
    path = tmp_path / "tall.nii.gz"
    save_nifti(Volume(data=hu, affine=a), path, dtype=np.int16)
    return path


def test_longleg_needs_hip_to_ankle(tmp_path: Path) -> None:
    short = _tall_ct(tmp_path, 150)  # 600 mm
    with pytest.raises(InputError) as err:
        from_ct.render_from_ct(short, tmp_path / "o", seed=1, views=("longleg",), side="left")
    assert err.value.reason == "ct_too_short_for_longleg"
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())
    tall = _tall_ct(tmp_path, 220)  # 880 mm
    lmk = {
        "FKC": [0.0, 0.0, 430.0],
        "TKC": [0.0, 0.0, 420.0],
        "FHC": [0.0, 0.0, 880.0],
        "AC": [0.0, 0.0, 40.0],
    }
    (tmp_path / "lm.json").write_text(json.dumps(lmk))
    with pytest.raises(InputError) as err:  # the hip centre is too close to the top of the scan
        from_ct.render_from_ct(
            tall, tmp_path / "o", seed=1, views=("longleg",), side="left", landmarks_path=tmp_path / "lm.json"
        )
    assert err.value.reason == "ct_too_short_for_longleg"
    out = from_ct.render_from_ct(
        tall, tmp_path / "o", seed=1, views=("longleg",), side="left", pitch_mm={"longleg": 2.0}
    )
    t = truth_of(out)
    g = t["films"]["longleg_ap"]["geometry"]
    assert g["rows"] >= 650 and dciodvfy_errors(out / "longleg_ap.dcm") == []


# --- bad inputs ---------------------------------------------------------------------------------------------
def _reason(tmp_path: Path, ct: Path, **kw: object) -> str:
    args: dict[str, object] = {"seed": 1, "views": ("knee-ap",), "side": "left"} | kw
    with pytest.raises(InputError) as err:
        from_ct.render_from_ct(ct, tmp_path / "out", **args)  # type: ignore[arg-type]
    return err.value.reason


def test_bad_inputs_have_reason_codes(inputs: Inputs, tmp_path: Path) -> None:
    assert _reason(tmp_path, tmp_path / "missing.nii.gz") == "ct_not_found"
    (tmp_path / "ct.txt").write_text("not a CT")
    assert _reason(tmp_path, tmp_path / "ct.txt") == "ct_unsupported_format"
    assert _reason(tmp_path, inputs.nifti, side="both") == "bad_side"
    assert _reason(tmp_path, inputs.nifti, views=("knee-ap", "hip")) == "bad_view"
    assert _reason(tmp_path, inputs.nifti, landmarks_path=tmp_path / "nope.json") == "landmarks_not_found"
    (tmp_path / "l1.json").write_text(json.dumps({"FKC": [0, 0, 0]}))
    assert _reason(tmp_path, inputs.nifti, landmarks_path=tmp_path / "l1.json") == "missing_landmarks"
    (tmp_path / "l2.json").write_text(json.dumps({"FKC": [0, 0], "TKC": [0, 0, 1]}))
    assert _reason(tmp_path, inputs.nifti, landmarks_path=tmp_path / "l2.json") == "bad_landmarks"
    (tmp_path / "l3.json").write_text("{not json")
    assert _reason(tmp_path, inputs.nifti, landmarks_path=tmp_path / "l3.json") == "landmarks_unreadable"
    # e.g. a knee centre from another scan of the patient
    assert _reason(tmp_path, inputs.nifti, knee_centre_mm=(*CENTRE_XY, GAP_Z - 400.0)) == (
        "knee_centre_outside_ct"
    )
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_cli_runs_and_reports_reasons(
    inputs: Inputs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["simulate-ct", "--out", str(tmp_path / "cli"), "--seed", "3", "--side", "left"]
    rc = xr3d_main(
        [
            *base,
            *("--ct", str(inputs.nifti), "--views", "knee-lat", "--knee-pitch", "1.0"),
            f"--knee-centre={CENTRE_XY[0]},{CENTRE_XY[1]},{GAP_Z}",
            "--remove-table",
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    folder = Path(out.strip().split(" to ")[-1])
    t = truth_of(folder)
    assert t["knee_centre_from"] == "given" and t["ct"]["table_removed"] is True
    assert xr3d_main([*base, "--ct", str(tmp_path / "none.nii")]) == 2
    assert "[ct_not_found]" in capsys.readouterr().err
    assert xr3d_main([*base, "--ct", str(inputs.nifti), "--views", "longleg"]) == 2
    assert "[ct_too_short_for_longleg]" in capsys.readouterr().err
    assert xr3d_main([*base, "--ct", str(inputs.nifti), "--knee-centre=1,2"]) == 2
    assert "[bad_argument]" in capsys.readouterr().err
