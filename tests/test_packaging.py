"""The wheel a clinic box installs (systemd/install.sh: a regular, non-editable ``pip install``).

Fast: the wheel is built from a copy of the tracked source (``pip wheel --no-build-isolation``, offline)
and its file list and metadata are read: the shipped ONNX models are in it, no PyTorch checkpoint is,
and torch is never an unconditional requirement.

Slow (``make test-slow``): the wheel installed into a fresh venv without torch (runtime dependencies from
the package index), then ``xr3d process`` and ``xr3d watch --once`` of that venv, run from a folder
outside the source tree, measure a simulated long-leg film (demo seed 900001) with the models the wheel
carries.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FILM_SEED = 900001  # demo/docs seed range
MHKA_TOLERANCE_DEG = 3.0  # as tests/test_pipeline_study.py: catches a broken install, not model error
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".safetensors")


def _tracked() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True)
    return [p for p in out.stdout.decode().split("\0") if p]


def _env() -> dict[str, str]:
    # nothing from the source tree may leak into the installed package's imports
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from a clean copy of the tracked files (no stale build/ folder of the checkout)."""
    src = tmp_path_factory.mktemp("src")
    for rel in _tracked():
        if (REPO / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, src / rel)
    out = tmp_path_factory.mktemp("wheel")
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        str(src),
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        str(out),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, env=_env(), check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    (whl,) = out.glob("xr3d-*.whl")
    return whl


def test_wheel_carries_the_onnx_models(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {p for p in _tracked() if p.startswith("models/") and p.endswith(".onnx")}
    assert shipped, "the repository ships no ONNX model"
    # installed as <site-packages>/models/, where the code's default models folder points
    assert shipped <= names
    assert "models/landmarks_whole.onnx" in names and "models/landmarks_crop.onnx" in names


def test_wheel_has_no_training_checkpoints(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert not [n for n in names if n.lower().endswith(CHECKPOINT_SUFFIXES)]
    # the models folder holds models only (no training reports or data)
    assert all(n.endswith(".onnx") for n in names if n.startswith("models/"))


def test_torch_is_never_a_runtime_requirement(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        (meta,) = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        msg = Parser().parsestr(z.read(meta).decode())
    requires = msg.get_all("Requires-Dist") or []
    assert any(r.startswith("onnxruntime") for r in requires)
    torch = [r for r in requires if r.split(";")[0].strip().lower().startswith("torch")]
    # torch only behind an extra (train), never unconditional
    assert torch and all("extra ==" in r for r in torch)


@pytest.fixture(scope="module")
def film(request: pytest.FixtureRequest) -> Path:
    """One simulated long-leg film (demo seed), rendered once per checkout into pytest's cache."""
    cache = request.config.cache.mkdir("xr3d_packaging_film")
    case = cache / f"case_{FILM_SEED}"
    if not (case / "longleg_ap.dcm").is_file():
        cmd = [sys.executable, "-m", "appliance.cli.main", "simulate", "--n", "1", "--seed", str(FILM_SEED)]
        cmd += ["--views", "longleg", "--no-ct", "--no-contralateral", "--out", str(cache)]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=False)
        assert done.returncode == 0, done.stderr[-3000:]
    return case


@pytest.mark.slow
def test_installed_wheel_measures_a_film_without_torch(wheel: Path, film: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=_env())
    py, xr3d = venv / "bin" / "python", venv / "bin" / "xr3d"
    pip = subprocess.run(
        [str(py), "-m", "pip", "install", "-q", str(wheel)], capture_output=True, text=True, env=_env()
    )
    assert pip.returncode == 0, pip.stderr[-3000:]
    work = tmp_path / "work"  # outside the source tree: only the installed package can be imported
    work.mkdir()

    probe = (
        "import importlib.util, json; import appliance, appliance.landmarks.detector as d;"
        "print(json.dumps({'torch': importlib.util.find_spec('torch') is not None,"
        " 'appliance': appliance.__file__, 'models': str(d.DEFAULT_MODELS_DIR)}))"
    )
    info = json.loads(
        subprocess.run(
            [str(py), "-c", probe], capture_output=True, text=True, cwd=work, env=_env(), check=True
        ).stdout
    )
    assert info["torch"] is False
    assert Path(info["appliance"]).is_relative_to(venv) and Path(info["models"]).is_relative_to(venv)
    assert (Path(info["models"]) / "landmarks_whole.onnx").is_file()

    truth = json.loads((film / "truth.json").read_text())["films"]["longleg_ap"]["angles_2d"]

    # xr3d process
    done = subprocess.run(
        [str(xr3d), "process", str(film / "longleg_ap.dcm"), "--out", str(work / "processed"), "--json"],
        capture_output=True,
        text=True,
        cwd=work,
        env=_env(),
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (result,) = (work / "processed").glob("*/result.json")
    doc = json.loads(result.read_text())
    assert doc["angles_2d"]["mHKA"] == pytest.approx(truth["mHKA"], abs=MHKA_TOLERANCE_DEG)

    # xr3d watch --once, the service as systemd runs it
    (work / "inbox").mkdir()
    shutil.copyfile(film / "longleg_ap.dcm", work / "inbox" / "film.dcm")
    cfg = work / "xr3d.toml"
    cfg.write_text(
        '[paths]\ninbox = "inbox"\noutbox = "outbox"\nstate = "state"\n[ingest]\nstable_seconds = 0.0\n'
        "[jobs]\nquiet_seconds = 0.0\n[watch]\ntick_seconds = 0.05\n"
    )
    done = subprocess.run(
        [str(xr3d), "watch", "--once", "--config", str(cfg)],
        capture_output=True,
        text=True,
        cwd=work,
        env=_env(),
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (result,) = (work / "outbox").glob("*/result.json")
    doc = json.loads(result.read_text())
    assert doc["status"] == "measured"
    assert doc["angles_2d"]["mHKA"] == pytest.approx(truth["mHKA"], abs=MHKA_TOLERANCE_DEG)
    assert set(doc["model_versions"]) >= {"landmarks_whole", "landmarks_crop"}
