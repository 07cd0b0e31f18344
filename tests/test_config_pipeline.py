"""The ``[pipeline]`` and ``[retention]`` settings: validation with specific errors, and each setting
changing what the real service does (real DICOM films, real SQLite job store, the shipped ONNX landmark
models on ONNX Runtime CPU, real outbox; ``xr3d watch --once`` as a subprocess for the CLI wiring)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from service_films import StudyFactory, cached_template, drop, visible_outputs, watch_cmd, write_config

from appliance.config import (
    SHIPPED_MODELS_DIR,
    ConfigError,
    Settings,
    load_settings,
    settings_from_mapping,
)
from appliance.jobs.service import Service
from appliance.landmarks.confidence import LOW_CONFIDENCE
from appliance.landmarks.detector import LandmarkDetector
from appliance.landmarks.knee_confidence import KNEE_LOW_CONFIDENCE
from appliance.pipeline.study import DISABLED, StudyProcessor


def _load(tmp_path: Path, text: str) -> Settings:
    cfg = tmp_path / "xr3d.toml"
    cfg.write_text('[paths]\ninbox = "in"\noutbox = "out"\nstate = "st"\n' + text)
    return load_settings(cfg)


def test_defaults(tmp_path: Path) -> None:
    s = _load(tmp_path, "")
    assert s.pipeline.models_dir == SHIPPED_MODELS_DIR
    assert (s.pipeline.models_dir / "landmarks_whole.onnx").is_file()
    assert s.pipeline.low_confidence == LOW_CONFIDENCE
    assert s.pipeline.knee_low_confidence == KNEE_LOW_CONFIDENCE
    assert s.pipeline.reconstruction and s.pipeline.report_pdf and s.pipeline.dicom_outputs
    assert s.retention.store_days == 30.0


def test_values_are_read(tmp_path: Path) -> None:
    (tmp_path / "mymodels").mkdir()
    s = _load(
        tmp_path,
        '[pipeline]\nmodels_dir = "mymodels"\nlow_confidence = 0.55\nknee_low_confidence = 0.65\n'
        "reconstruction = false\n"
        "report_pdf = false\ndicom_outputs = false\n[retention]\nstore_days = 0\n",
    )
    # relative to the config file's folder, like [paths]
    assert s.pipeline.models_dir == (tmp_path / "mymodels").resolve()
    assert s.pipeline.low_confidence == 0.55
    assert s.pipeline.knee_low_confidence == 0.65
    assert not (s.pipeline.reconstruction or s.pipeline.report_pdf or s.pipeline.dicom_outputs)
    assert s.retention.store_days == 0.0


@pytest.mark.parametrize(
    ("text", "reason", "key"),
    [
        ("[pipeline]\nmodels_dir = 'nowhere'\n", "config_bad_value", "pipeline.models_dir"),
        ("[pipeline]\nmodels_dir = 3\n", "config_bad_type", "pipeline.models_dir"),
        ("[pipeline]\nmodels_dir = ''\n", "config_bad_type", "pipeline.models_dir"),
        ("[pipeline]\nlow_confidence = 1.5\n", "config_bad_value", "pipeline.low_confidence"),
        ("[pipeline]\nlow_confidence = 0\n", "config_bad_value", "pipeline.low_confidence"),
        ("[pipeline]\nlow_confidence = nan\n", "config_bad_value", "pipeline.low_confidence"),
        ("[pipeline]\nlow_confidence = '0.3'\n", "config_bad_type", "pipeline.low_confidence"),
        ("[pipeline]\nknee_low_confidence = 1\n", "config_bad_value", "pipeline.knee_low_confidence"),
        ("[pipeline]\nknee_low_confidence = 'x'\n", "config_bad_type", "pipeline.knee_low_confidence"),
        ("[pipeline]\nreconstruction = 'no'\n", "config_bad_type", "pipeline.reconstruction"),
        ("[pipeline]\nreport_pdf = 0\n", "config_bad_type", "pipeline.report_pdf"),
        ("[pipeline]\ndicom_outputs = 1\n", "config_bad_type", "pipeline.dicom_outputs"),
        ("[pipeline]\ndicom_output = false\n", "config_unknown_key", "dicom_output"),
        ("[retention]\nstore_days = -1\n", "config_bad_value", "retention.store_days"),
        ("[retention]\nstore_days = inf\n", "config_bad_value", "retention.store_days"),
        ("[retention]\nstore_days = true\n", "config_bad_type", "retention.store_days"),
        ("[retention]\ndays = 3\n", "config_unknown_key", "days"),
    ],
)
def test_bad_values_have_specific_errors(tmp_path: Path, text: str, reason: str, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, text)
    assert err.value.reason == reason
    assert key in str(err.value)


# --- behaviour -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def factory(request: pytest.FixtureRequest) -> StudyFactory:
    template = cached_template(request.config.cache.mkdir("xr3d_service_template"))
    return StudyFactory(template, tag="xr3d pipeline settings test")


@pytest.fixture(scope="module")
def detector() -> Iterator[LandmarkDetector]:
    with LandmarkDetector() as det:
        yield det


def _run(
    root: Path,
    factory: StudyFactory,
    index: int,
    pipeline: dict[str, Any],
    det: LandmarkDetector,
    views: tuple[str, ...] = ("longleg_ap",),
) -> Any:
    doc = {
        "ingest": {"stable_seconds": 0.0},
        "jobs": {"quiet_seconds": 0.0, "backoff_seconds": 0.0},
        "watch": {"tick_seconds": 0.01},
        "pipeline": pipeline,
    }
    over = {"inbox": root / "in", "outbox": root / "out", "state": root / "st"}
    s = settings_from_mapping(doc, base_dir=root, overrides=over)
    s.paths.inbox.mkdir(parents=True)
    for view, data in factory.films(index, views=views).items():
        drop(s.paths.inbox, f"{view}.dcm", data)
    summary = Service(s, processor=StudyProcessor.from_settings(det, s.pipeline)).run(once=True)
    assert summary.studies == {"done": 1}
    (folder,) = visible_outputs(s.paths.outbox)
    return folder, json.loads((folder / "result.json").read_text())


def test_report_off_and_dicom_on(tmp_path: Path, factory: StudyFactory, detector: LandmarkDetector) -> None:
    folder, doc = _run(tmp_path, factory, 31, {"report_pdf": False}, detector)
    stages = doc["flags"]["stages"]
    assert stages["report"]["status"] == DISABLED
    assert not (folder / "report.pdf").exists()
    assert "report_disabled" not in doc["flags"]["reasons"]
    # the other writer still runs: only the one stage is turned off
    assert stages["dicom"]["status"] == "done" and (folder / "dicom").is_dir()
    # no knee film and reconstruction on: the ordinary "skipped", not "disabled"
    assert stages["reconstruction"]["status"] == "skipped"


def test_low_confidence_threshold_flags(
    tmp_path: Path, factory: StudyFactory, detector: LandmarkDetector
) -> None:
    _, doc = _run(tmp_path, factory, 32, {"low_confidence": 0.999, "dicom_outputs": False}, detector)
    lm = doc["landmarks_2d"]["longleg_ap"]
    assert doc["flags"]["low_confidence_threshold"] == 0.999
    expected = sorted(n for n, p in lm.items() if p["confidence"] < 0.999)
    assert doc["flags"]["low_confidence_landmarks"] == expected
    assert all(p["low_confidence"] == (p["confidence"] < 0.999) for p in lm.values())
    # A threshold this strict flags at least one landmark of a real film (the models' peaks are not
    # all as sharp as a training target), so the study needs review.
    assert expected and doc["flags"]["needs_review"] is True


def test_knee_low_confidence_threshold_flags_knee_films(
    tmp_path: Path, factory: StudyFactory, detector: LandmarkDetector
) -> None:
    """``knee_low_confidence`` reaches the knee-film measurement; the long-leg threshold stays apart."""
    pipeline = {"knee_low_confidence": 0.999, "dicom_outputs": False, "reconstruction": False}
    _, doc = _run(tmp_path, factory, 34, pipeline, detector, views=("longleg_ap", "knee_ap"))
    knee = doc["knee_films"]["knee_ap"]
    assert knee["status"] == "measured"
    assert knee["flags"]["low_confidence_threshold"] == 0.999
    expected = sorted(n for n, p in knee["landmarks"].items() if p["confidence"] < 0.999)
    assert expected and knee["flags"]["low_confidence_landmarks"] == expected
    assert knee["flags"]["needs_review"] is True
    assert doc["flags"]["low_confidence_threshold"] == LOW_CONFIDENCE


def test_watch_cli_applies_the_pipeline_section(tmp_path: Path, factory: StudyFactory) -> None:
    """``xr3d watch --once`` reads [pipeline] from its config: DICOM objects off, reconstruction off."""
    cfg = write_config(tmp_path, stable_seconds=0.0)
    with cfg.open("a") as fh:
        fh.write("[pipeline]\ndicom_outputs = false\nreconstruction = false\nlow_confidence = 0.25\n")
    # quiet_seconds 600 in write_config: a complete study (all three views) runs at once
    for view, data in factory.films(33).items():
        drop(tmp_path / "inbox", f"{view}.dcm", data)
    done = subprocess.run(watch_cmd(cfg, "--once"), capture_output=True, cwd=tmp_path, check=False)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    (folder,) = visible_outputs(tmp_path / "outbox")
    doc = json.loads((folder / "result.json").read_text())
    stages = doc["flags"]["stages"]
    assert stages["dicom"]["status"] == DISABLED and not (folder / "dicom").exists()
    assert not any(f.startswith("dicom/") for f in doc["files"])
    # knee films are there, so only the setting explains a reconstruction that did not run
    assert stages["reconstruction"]["status"] == DISABLED and doc["reconstruction"] is None
    assert not any(r.startswith(("dicom_", "reconstruction_")) for r in doc["flags"]["reasons"])
    assert doc["flags"]["low_confidence_threshold"] == 0.25


def test_watch_cli_models_dir_is_used(tmp_path: Path) -> None:
    """A models_dir without the models stops the service at start (model_missing), before any study."""
    cfg = write_config(tmp_path)
    (tmp_path / "empty_models").mkdir()
    with cfg.open("a") as fh:
        fh.write('[pipeline]\nmodels_dir = "empty_models"\n')
    done = subprocess.run(watch_cmd(cfg, "--once"), capture_output=True, cwd=tmp_path, check=False)
    assert done.returncode == 2
    assert "model_missing" in done.stderr.decode() + done.stdout.decode()
    # ... and a copy of the shipped models in another folder works
    shutil.rmtree(tmp_path / "empty_models")
    shutil.copytree(SHIPPED_MODELS_DIR, tmp_path / "empty_models", ignore=shutil.ignore_patterns("*.pt"))
    done = subprocess.run(watch_cmd(cfg, "--once"), capture_output=True, cwd=tmp_path, check=False)
    assert done.returncode == 0, done.stderr.decode()[-2000:]


def test_demo_takes_the_pipeline_section(tmp_path: Path, factory: StudyFactory) -> None:
    """``xr3d demo --config`` applies [pipeline] (and nothing else of the file) to its own folders."""
    samples = tmp_path / "samples"
    samples.mkdir()
    (samples / "longleg_ap.dcm").write_bytes(factory.films(34, views=("longleg_ap",))["longleg_ap"])
    cfg = tmp_path / "pipeline.toml"
    cfg.write_text('[paths]\ninbox = "x"\noutbox = "y"\nstate = "z"\n[pipeline]\nreport_pdf = false\n')
    cmd = [sys.executable, "-m", "appliance.cli.main", "demo", "--out", str(tmp_path / "demo")]
    cmd += ["--samples", str(samples), "--config", str(cfg), "--json", "--workers", "1"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    (row,) = json.loads(done.stdout)["studies"]
    assert row["stages"]["report"] == DISABLED and row["stages"]["dicom"] == "done"
    assert not (tmp_path / "demo" / "outbox" / row["study"] / "report.pdf").exists()
    assert not (tmp_path / "x").exists()  # the file's [paths] are not used
