"""Knee films through the study pipeline and PatientOrientation handling, end to end: real DICOM films
(the service tests' simulated template study, cloned with new UIDs and written with pydicom), the real
service loop with its SQLite job store, real ONNX Runtime sessions. The knee model here is the network
with seeded random weights exported to ONNX in the test (the plumbing must not depend on how well the
shipped model is trained); ``test_shipped_knee_model_measures_the_template`` uses the shipped one."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from service_films import StudyFactory, assert_no_phi, cached_template, drop, visible_outputs

from appliance.config import Settings, settings_from_mapping
from appliance.jobs.service import Service
from appliance.landmarks.detector import DEFAULT_MODELS_DIR, LandmarkDetector
from appliance.landmarks.knee_detector import KNEE_MODEL
from appliance.landmarks.knee_views import KNEE_LANDMARKS
from appliance.pipeline.knee import KneeDetectorHolder, overlay_name
from appliance.pipeline.study import StudyProcessor
from appliance.process import process_film

torch = pytest.importorskip("torch")
# The reconstruction, report and DICOM stages are covered by test_pipeline_study.py; off here for speed.
FAST: dict[str, Any] = {"reconstruction": False, "report_pdf": False, "dicom_outputs": False}


@pytest.fixture(scope="module")
def template(request: pytest.FixtureRequest) -> Path:
    return cached_template(request.config.cache.mkdir("xr3d_service_template"))


@pytest.fixture(scope="module")
def factory(template: Path) -> StudyFactory:
    return StudyFactory(template, tag="xr3d knee pipeline test")


@pytest.fixture(scope="module")
def detector() -> Iterator[LandmarkDetector]:
    with LandmarkDetector() as det:
        yield det


@pytest.fixture(scope="module")
def knee_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from export.models.knee_landmark_net import CHANNELS, KNEE_GEOMETRY, KneeLandmarkNet
    from export.training.knee_landmarks import MODEL_VERSION, export_knee_model

    d = tmp_path_factory.mktemp("knee_models")
    torch.manual_seed(11)
    g = KNEE_GEOMETRY
    meta = {
        "version": MODEL_VERSION,
        "training_seed": 11,
        "input_geometry": g.to_dict(),
        "channels": list(CHANNELS),
        "views": {v: list(n) for v, n in KNEE_LANDMARKS.items()},
    }
    ex = torch.rand((1, 1, g.rows, g.cols), generator=torch.Generator().manual_seed(2))
    export_knee_model(KneeLandmarkNet(), d / KNEE_MODEL, meta, ex)
    return d


def _settings(root: Path) -> Settings:
    doc = {
        "ingest": {"stable_seconds": 0.0, "incomplete_grace_seconds": 0.0},
        "jobs": {"quiet_seconds": 0.0, "backoff_seconds": 0.0},
        "watch": {"tick_seconds": 0.01},
    }
    over = {"inbox": root / "in", "outbox": root / "out", "state": root / "st"}
    s = settings_from_mapping(doc, base_dir=root, overrides=over)
    s.paths.inbox.mkdir(parents=True, exist_ok=True)
    return s


def _run(root: Path, films: dict[str, bytes], proc: StudyProcessor) -> tuple[Path, dict[str, Any]]:
    s = _settings(root)
    for view, data in films.items():
        drop(s.paths.inbox, f"{view}.dcm", data)
    summary = Service(s, processor=proc).run(once=True)
    assert summary.studies == {"done": 1}
    (folder,) = visible_outputs(s.paths.outbox)
    return folder, json.loads((folder / "result.json").read_text())


def _mirrored(data: bytes, row_letter: str) -> bytes:
    """The same film stored mirrored left-right, with PatientOrientation saying so."""
    ds = pydicom.dcmread(io.BytesIO(data))
    arr = ds.pixel_array
    ds.PixelData = np.ascontiguousarray(arr[:, ::-1]).tobytes()
    ds.PatientOrientation = [row_letter, list(ds.PatientOrientation)[1]]
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_knee_only_study_gets_knee_measurements(
    tmp_path: Path, factory: StudyFactory, detector: LandmarkDetector, knee_models: Path, template: Path
) -> None:
    proc = StudyProcessor(detector, knee=KneeDetectorHolder(knee_models), **FAST)
    folder, doc = _run(tmp_path, factory.films(1, views=("knee_ap", "knee_lat")), proc)
    assert doc["status"] == "partial" and "no_longleg_film" in doc["flags"]["reasons"]
    side = json.loads((template / "truth.json").read_text())["side"][0].upper()
    assert set(doc["knee_films"]) == {"knee_ap", "knee_lat"}
    for view, entry in doc["knee_films"].items():
        assert entry["status"] == "measured" and entry["reason"] is None
        assert tuple(entry["landmarks"]) == KNEE_LANDMARKS[view]
        for lm in entry["landmarks"].values():
            assert 0.0 <= lm["confidence"] <= 1.0 and np.isfinite([lm["col"], lm["row"]]).all()
            assert lm["low_confidence"] == (lm["confidence"] < entry["flags"]["low_confidence_threshold"])
        low = set(entry["flags"]["low_confidence_landmarks"])
        for value, names in entry["flags"]["flagged_values"].items():
            assert value in entry["measurements"] and names and set(names) <= low
        assert (folder / entry["overlay"]).is_file() and entry["overlay"] == overlay_name(view)
        assert entry["overlay"] in doc["files"]
        assert entry["orientation"]["patient_orientation"] == doc["films"][view]["patient_orientation"]
        assert entry["orientation"]["side"] == side
    assert set(doc["knee_films"]["knee_ap"]["measurements"]) == {"JLCA"}
    assert set(doc["knee_films"]["knee_lat"]["measurements"]) == {"tibial_slope_deg", "knee_flexion_deg"}
    assert doc["films"]["knee_ap"]["patient_orientation"] == ["L", "F"]
    assert doc["films"]["knee_lat"]["patient_orientation"][0] == ("P" if side == "R" else "A")
    assert doc["model_versions"]["knee_landmarks"]
    assert "knee_films" in doc["timings_s"]
    assert_no_phi(json.dumps(doc))


def test_missing_knee_model_is_recorded_not_fatal(
    tmp_path: Path, factory: StudyFactory, detector: LandmarkDetector
) -> None:
    empty = tmp_path / "no_models"
    empty.mkdir()
    proc = StudyProcessor(detector, knee=KneeDetectorHolder(empty), **FAST)
    folder, doc = _run(tmp_path, factory.films(2), proc)
    assert doc["status"] == "measured" and doc["angles_2d"]["mHKA"] is not None
    for entry in doc["knee_films"].values():
        assert entry["status"] == "unavailable" and "model_missing" in entry["reason"]
    assert "knee_landmarks_unavailable" in doc["flags"]["reasons"] and doc["flags"]["needs_review"]
    assert not any(p.name.startswith("knee_overlay") for p in folder.iterdir())


def test_mirrored_knee_ap_film_maps_back_to_stored_pixels(
    tmp_path: Path, factory: StudyFactory, detector: LandmarkDetector, knee_models: Path
) -> None:
    proc = StudyProcessor(detector, knee=KneeDetectorHolder(knee_models), **FAST)
    films = factory.films(3, views=("knee_ap",))
    _, plain = _run(tmp_path / "a", films, proc)
    _, mirrored = _run(tmp_path / "b", {"knee_ap": _mirrored(films["knee_ap"], "R")}, proc)
    a, b = plain["knee_films"]["knee_ap"], mirrored["knee_films"]["knee_ap"]
    assert b["orientation"]["display_mirrored"] is True and a["orientation"]["display_mirrored"] is False
    assert b["orientation"]["mirrored_for_model"] != a["orientation"]["mirrored_for_model"]
    cols = plain["films"]["knee_ap"]["columns"]
    for n in KNEE_LANDMARKS["knee_ap"]:
        assert b["landmarks"][n]["col"] == pytest.approx(cols - 1 - a["landmarks"][n]["col"], abs=1e-3)
        assert b["landmarks"][n]["row"] == pytest.approx(a["landmarks"][n]["row"], abs=1e-3)
        assert b["landmarks"][n]["confidence"] == pytest.approx(a["landmarks"][n]["confidence"], abs=1e-5)
    assert b["measurements"]["JLCA"] == pytest.approx(a["measurements"]["JLCA"], abs=1e-4)


def test_mirrored_longleg_film_in_process(tmp_path: Path, template: Path, detector: LandmarkDetector) -> None:
    data = (template / "longleg_ap.dcm").read_bytes()
    (tmp_path / "plain.dcm").write_bytes(data)
    (tmp_path / "mirror.dcm").write_bytes(_mirrored(data, "R"))
    settings = _settings(tmp_path)
    a = process_film(tmp_path / "plain.dcm", tmp_path / "a", settings, detector).document
    b = process_film(tmp_path / "mirror.dcm", tmp_path / "b", settings, detector).document
    assert a["flags"]["display_mirrored"] is False and b["flags"]["display_mirrored"] is True
    assert b["flags"]["patient_orientation"][0] == "R"
    cols = a["input"]["columns"]
    for n, p in a["landmarks"].items():
        assert b["landmarks"][n]["col"] == pytest.approx(cols - 1 - p["col"], abs=1e-3)
        assert b["landmarks"][n]["row"] == pytest.approx(p["row"], abs=1e-3)
    for k, v in a["angles_2d"].items():
        assert b["angles_2d"][k] == pytest.approx(v, abs=1e-6)
    assert b["apparent_side"] == a["apparent_side"] and b["flags"]["side_mismatch"] is False


@pytest.mark.skipif(not (DEFAULT_MODELS_DIR / KNEE_MODEL).is_file(), reason="shipped knee model missing")
def test_shipped_knee_model_measures_the_template(
    tmp_path: Path, factory: StudyFactory, detector: LandmarkDetector, template: Path
) -> None:
    truth = json.loads((template / "truth.json").read_text())
    _, doc = _run(tmp_path, factory.films(4, views=("knee_ap", "knee_lat")), StudyProcessor(detector, **FAST))
    lat = doc["knee_films"]["knee_lat"]
    assert lat["status"] == "measured"
    # The template is a coarse 0.8 mm/px film; the shipped model's slope/flexion errors on held-out
    # 0.25 mm films are in docs/knee-landmarks.md. 5 deg catches a broken pipeline (wrong view channels,
    # mirroring, spacing) without failing on one film's ordinary error.
    a3 = truth["angles_3d"]
    assert lat["measurements"]["tibial_slope_deg"] == pytest.approx(a3["tibial_slope_deg"], abs=5.0)
    assert lat["measurements"]["knee_flexion_deg"] == pytest.approx(a3["knee_flexion_deg"], abs=5.0)
    ap = doc["knee_films"]["knee_ap"]
    t = truth["films"]["knee_ap"]["landmarks_2d"]
    mm = truth["films"]["knee_ap"]["pixel_spacing_mm"][0] / truth["films"]["knee_ap"]["magnification"]
    err = [
        np.hypot(ap["landmarks"][n]["col"] - t[n][0], ap["landmarks"][n]["row"] - t[n][1]) * mm
        for n in t
        if n in ap["landmarks"]
    ]
    assert len(err) == 6 and float(np.median(err)) < 3.0
