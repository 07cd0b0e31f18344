"""``xr3d process`` with knee AP / lateral films: real simulated DICOM films (the service tests' template
study, cloned with new UIDs by pydicom), the shipped long-leg and knee ONNX models on ONNX Runtime CPU,
one output folder per study."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from service_films import StudyFactory, cached_template

from appliance.cli.main import main
from appliance.landmarks.knee_confidence import KNEE_LOW_CONFIDENCE
from appliance.landmarks.knee_views import KNEE_LANDMARKS
from appliance.pipeline.knee import overlay_name
from appliance.process import RESULT_SCHEMA

LONGLEG_FILES = {"result.json", "overlay.png", "overlay_preview.png", "cpak_chart.png"}


@pytest.fixture(scope="module")
def template(request: pytest.FixtureRequest) -> Path:
    return cached_template(request.config.cache.mkdir("xr3d_service_template"))


@pytest.fixture(scope="module")
def factory(template: Path) -> StudyFactory:
    return StudyFactory(template, tag="xr3d process knee test")


def _write(folder: Path, films: dict[str, bytes], prefix: str = "") -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for view, data in films.items():
        p = folder / f"{prefix}{view}.dcm"
        p.write_bytes(data)
        out[view] = p
    return out


def _process(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any], str]:
    rc = main(["process", *args, "--json"])
    cap = capsys.readouterr()
    return rc, json.loads(cap.out), cap.err


def test_longleg_and_knee_films_of_one_study_share_one_folder(
    tmp_path: Path, factory: StudyFactory, template: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = _write(tmp_path / "in", factory.films(1))
    out = tmp_path / "out"
    rc, summary, err = _process([*map(str, paths.values()), "--out", str(out)], capsys)
    assert rc == 0, err
    assert summary["failed"] == []
    (entry,) = summary["processed"]
    assert entry["study_uid"] == factory.study_uid(1)
    assert sorted(entry["input"]) == sorted(map(str, paths.values()))
    folder = out / factory.study_uid(1)
    names = {p.name for p in folder.iterdir()}
    assert names == LONGLEG_FILES | {overlay_name("knee_ap"), overlay_name("knee_lat")}
    doc = json.loads((folder / "result.json").read_text())
    assert doc["schema"] == RESULT_SCHEMA and doc["input"]["view"] == "longleg_ap"
    assert doc["angles_2d"]["mHKA"] is not None
    assert set(doc["model_versions"]) >= {"landmarks_whole", "landmarks_crop", "knee_landmarks"}
    truth = json.loads((template / "truth.json").read_text())
    for view in ("knee_ap", "knee_lat"):
        k = doc["knee_films"][view]
        assert k["status"] == "measured" and k["file"] == paths[view].name
        assert tuple(k["landmarks"]) == KNEE_LANDMARKS[view]
        assert k["flags"]["low_confidence_threshold"] == KNEE_LOW_CONFIDENCE
        assert (folder / k["overlay"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Same 5-degree bound as the study pipeline's shipped-model test (a 0.8 mm/px template film): it
    # catches wrong channels, mirroring or spacing, not one film's ordinary model error.
    lat = doc["knee_films"]["knee_lat"]["measurements"]
    assert lat["tibial_slope_deg"] == pytest.approx(truth["angles_3d"]["tibial_slope_deg"], abs=5.0)
    ap = doc["knee_films"]["knee_ap"]
    t = truth["films"]["knee_ap"]["landmarks_2d"]
    mm = truth["films"]["knee_ap"]["pixel_spacing_mm"][0] / truth["films"]["knee_ap"]["magnification"]
    errs = [
        np.hypot(ap["landmarks"][n]["col"] - t[n][0], ap["landmarks"][n]["row"] - t[n][1]) * mm
        for n in t
        if n in ap["landmarks"]
    ]
    assert len(errs) == 6 and float(np.median(errs)) < 3.0
    assert ap["measurements"]["JLCA"] is not None
    assert summary["processed"][0]["knee_films"]["knee_ap"]["measurements"] == ap["measurements"]


def test_knee_films_alone_and_knee_threshold(
    tmp_path: Path, factory: StudyFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = _write(tmp_path / "in", factory.films(2, views=("knee_ap", "knee_lat")))
    out = tmp_path / "out"
    rc, _, err = _process(
        [*map(str, paths.values()), "--out", str(out), "--knee-low-confidence", "0.999"], capsys
    )
    assert rc == 0, err
    doc = json.loads((out / factory.study_uid(2) / "result.json").read_text())
    assert doc["input"] is None and doc["landmarks"] == {} and doc["cpak"] is None
    assert set(doc["knee_films"]) == {"knee_ap", "knee_lat"}
    assert set(doc["files"]) == {"result.json", overlay_name("knee_ap"), overlay_name("knee_lat")}
    ap = doc["knee_films"]["knee_ap"]
    low = sorted(n for n, p in ap["landmarks"].items() if p["confidence"] < 0.999)
    assert low and ap["flags"]["low_confidence_landmarks"] == low
    assert doc["flags"]["needs_review"] is True


def test_duplicate_view_and_bad_file_are_reported_not_dropped(
    tmp_path: Path, factory: StudyFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    first = _write(tmp_path / "in", factory.films(3, views=("knee_ap",)), prefix="a_")
    second = _write(tmp_path / "in", factory.films(3, views=("knee_ap",)), prefix="b_")
    bad = tmp_path / "in" / "notes.dcm"
    bad.write_text("not a film")
    out = tmp_path / "out"
    rc, summary, err = _process(
        [str(first["knee_ap"]), str(bad), str(second["knee_ap"]), "--out", str(out)], capsys
    )
    assert rc == 2
    reasons = {Path(f["input"]).name: f["reason"] for f in summary["failed"]}
    assert reasons == {"a_knee_ap.dcm": "duplicate_view", "notes.dcm": "not_dicom"}
    assert "[duplicate_view]" in err
    doc = json.loads((out / factory.study_uid(3) / "result.json").read_text())
    assert doc["knee_films"]["knee_ap"]["file"] == "b_knee_ap.dcm"


def test_missing_knee_model_fails_knee_films_only(
    tmp_path: Path, factory: StudyFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    models = tmp_path / "models"
    models.mkdir()
    for name in ("landmarks_whole.onnx", "landmarks_crop.onnx"):
        shutil.copy(Path(__file__).resolve().parents[1] / "models" / name, models / name)
    paths = _write(tmp_path / "in", factory.films(4, views=("longleg_ap", "knee_lat")))
    out = tmp_path / "out"
    rc, summary, _ = _process([*map(str, paths.values()), "--out", str(out), "--models", str(models)], capsys)
    assert rc == 2
    assert [(Path(f["input"]).name, f["reason"]) for f in summary["failed"]] == [
        ("knee_lat.dcm", "model_missing")
    ]
    doc = json.loads((out / factory.study_uid(4) / "result.json").read_text())
    assert doc["knee_films"] == {} and doc["angles_2d"]["mHKA"] is not None


def test_knee_films_exported_as_png_with_sidecars_share_a_study(
    tmp_path: Path, factory: StudyFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """8-bit PNG exports of the knee films (sidecar: view, spacing, side, study key) are measured like
    the DICOM films: same landmarks within a few pixels, one study folder for both."""
    import pydicom
    from PIL import Image

    from appliance.ingest.dicom_reader import decode_pixels
    from appliance.ingest.presentation import bone_bright_unit

    dicoms = _write(tmp_path / "dcm", factory.films(5, views=("knee_ap", "knee_lat")))
    pngs = []
    for view, path in dicoms.items():
        ds = pydicom.dcmread(path)
        unit = bone_bright_unit(ds, decode_pixels(ds))
        png = tmp_path / "png" / f"{view}.png"
        png.parent.mkdir(exist_ok=True)
        Image.fromarray(np.round(unit * 255).astype(np.uint8)).save(png)
        mag = float(ds.get("EstimatedRadiographicMagnificationFactor", 1.0) or 1.0)
        spacing = [float(x) / mag for x in ds.ImagerPixelSpacing]
        side = str(ds.get("ImageLaterality", "") or ds.get("Laterality", ""))
        png.with_suffix(".png.json").write_text(
            json.dumps({"view": view, "spacing_mm": spacing, "side": side, "study": "knee export"})
        )
        pngs.append(png)
    rc, summary, err = _process([*map(str, pngs), "--out", str(tmp_path / "out")], capsys)
    assert rc == 0, err
    (entry,) = summary["processed"]
    doc = json.loads((Path(entry["out_dir"]) / "result.json").read_text())
    ref, _, _ = _process([*map(str, dicoms.values()), "--out", str(tmp_path / "ref")], capsys)
    assert ref == 0
    ref_doc = json.loads(next((tmp_path / "ref").glob("*/result.json")).read_text())
    for view in ("knee_ap", "knee_lat"):
        got, want = doc["knee_films"][view]["landmarks"], ref_doc["knee_films"][view]["landmarks"]
        d = [np.hypot(got[n]["col"] - want[n]["col"], got[n]["row"] - want[n]["row"]) for n in want]
        assert float(np.median(d)) < 3.0, (view, d)
