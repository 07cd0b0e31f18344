"""Processed studies in the outbox layout of docs/study-outputs.md, built from real parts for the GUI tests,
the GUI benchmark and the documentation screenshots.

A study is made from:

- films: a real simulated case (``export.simulator.case.generate_case``): long-leg AP, knee AP, knee
  lateral DICOM;
- everything the service writes (result.json ``xr3d.result/1``, films/, overlay, CPAK chart, report.pdf,
  dicom/sr.dcm...): the real service, ``xr3d watch --once`` on an inbox holding the case's films, with the
  shipped landmark models through ONNX Runtime;
- ``recon/`` when the service could not reconstruct (no reconstruction model in models/ yet): NOT a
  reconstruction. The simulator's own knee CT and label volume stand in for the
  reconstructed volume (labels renumbered to the contract's 1 femur, 2 tibia, 3 fibula, 4 patella), bone
  surfaces by scikit-image marching cubes, and the consistency score and the film | DRR pictures from the
  real ``appliance.recon.consistency.score_views`` against the knee films.

Building one coarse case takes ~30-60 s; :func:`cached_study_source` keeps it in pytest's cache directory so
later runs reuse it (a file lock keeps two xdist workers from building it twice).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
from PIL import Image
from scipy import ndimage

SEED = 900960  # demo/docs seed range (900000-999999): never a training or evaluation case
SIM_TO_RECON_LABEL = {2: 1, 3: 2, 4: 3, 5: 4}  # simulator femur, tibia, fibula, patella -> contract
BONES = {1: "femur", 2: "tibia", 3: "fibula", 4: "patella"}
VIEW_FILES = {"longleg_ap": "longleg_ap.dcm", "knee_ap": "knee_ap.dcm", "knee_lat": "knee_lat.dcm"}
FIXTURE_VERSION = "4"
_REPO = Path(__file__).resolve().parents[1]


def _inputs_digest() -> str:
    """A digest of everything the cached study is made from (shipped models, the service and simulator
    code): a cache built by older models or code is rebuilt instead of silently reused."""
    h = hashlib.sha256(FIXTURE_VERSION.encode())
    files = sorted(_REPO.glob("models/*.onnx"))
    for pkg in ("appliance", "engines", "export/simulator"):
        files += sorted((_REPO / pkg).rglob("*.py"))
    for f in files:
        h.update(str(f.relative_to(_REPO)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def simulate_case(seed: int, out: Path, *, coarse: bool = True) -> Path:
    """One simulated case (coarse pixels and voxels for tests; full resolution for screenshots)."""
    from export.simulator.case import CaseOptions, generate_case

    if coarse:
        opts = CaseOptions(
            write_ct=True,
            longleg_pitch=0.7,
            knee_pitch=0.5,
            leg_spacing=2.0,
            knee_spacing=1.0,
            contralateral=False,
            preview_max_px=300,
        )
    else:
        opts = CaseOptions()
    return Path(generate_case(seed, out, opts))


def write_ply(path: Path, verts: np.ndarray, faces: np.ndarray) -> None:
    """Binary little-endian PLY with float32 vertices and uint8-counted int32 triangles."""
    header = (
        "ply\nformat binary_little_endian 1.0\n"
        f"element vertex {len(verts)}\nproperty float x\nproperty float y\nproperty float z\n"
        f"element face {len(faces)}\nproperty list uchar int vertex_indices\nend_header\n"
    )
    tri = np.empty(len(faces), dtype=[("n", "u1"), ("i", "<i4", (3,))])
    tri["n"] = 3
    tri["i"] = faces
    with open(path, "wb") as fh:
        fh.write(header.encode("ascii"))
        fh.write(np.ascontiguousarray(verts, dtype="<f4").tobytes())
        fh.write(tri.tobytes())


def write_stl(path: Path, verts: np.ndarray, faces: np.ndarray) -> None:
    tri = verts[faces].astype(np.float32)
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
    rec = np.zeros(len(faces), dtype=[("n", "<f4", (3,)), ("v", "<f4", (3, 3)), ("a", "<u2")])
    rec["n"] = n
    rec["v"] = tri
    with open(path, "wb") as fh:
        fh.write(b"xr3d test fixture mesh".ljust(80, b" "))
        fh.write(struct.pack("<I", len(faces)))
        fh.write(rec.tobytes())


def _recon(case: Path, study: Path, films: dict[str, Any]) -> dict[str, Any]:
    from skimage.measure import marching_cubes

    from appliance.dicomio.geometry_tags import read_geometry
    from appliance.geometry.volume import RAS_TO_LPS, Volume
    from appliance.ingest.dicom_reader import decode_pixels
    from appliance.ingest.presentation import bone_bright_unit
    from appliance.recon.consistency import judge, score_views
    from appliance.recon.types import FilmView, Reconstruction

    rd = study / "recon"
    rd.mkdir()
    ct = nib.load(case / "ct_knee.nii.gz")
    lab_img = nib.load(case / "labels_knee.nii.gz")
    hu = np.asarray(ct.get_fdata(dtype=np.float32))
    sim = np.asarray(lab_img.dataobj)
    labels = np.zeros(sim.shape, np.uint8)
    for s, r in SIM_TO_RECON_LABEL.items():
        labels[sim == s] = r
    nib.save(nib.Nifti1Image(hu.astype(np.int16), ct.affine), rd / "volume.nii.gz")
    nib.save(nib.Nifti1Image(labels, ct.affine), rd / "labels.nii.gz")
    affine = RAS_TO_LPS @ np.asarray(ct.affine, dtype=np.float64)
    files = ["recon/volume.nii.gz", "recon/labels.nii.gz"]
    for value, name in BONES.items():
        mask = labels == value
        if mask.sum() < 10:
            continue
        # A slightly smoothed indicator gives a surface without voxel steps (as a reconstruction's would be).
        soft = ndimage.gaussian_filter(np.pad(mask, 2).astype(np.float32), 1.0)
        verts, faces, _, _ = marching_cubes(soft, 0.5)
        ijk = verts - 2.0
        xyz = ijk @ affine[:3, :3].T + affine[:3, 3]
        write_ply(rd / f"{name}.ply", xyz, faces)
        write_stl(rd / f"{name}.stl", xyz, faces)
        files += [f"recon/{name}.ply", f"recon/{name}.stl"]
    views = []
    for view in ("knee_ap", "knee_lat"):
        if view not in films:
            continue
        ds = pydicom.dcmread(study / films[view]["file"])
        geom = read_geometry(ds)
        if geom is None:
            continue
        views.append(FilmView(view, bone_bright_unit(ds, decode_pixels(ds)), geom))
    rec = Reconstruction(Volume(hu, affine), Volume(labels, affine))
    per_view, images = score_views(rec, views)
    verdict = judge(per_view, None)
    for vi in images:
        film8 = _to_u8(vi.film)
        drr8 = _to_u8(vi.drr)
        Image.fromarray(np.concatenate([film8, drr8], axis=1)).save(rd / f"reprojection_{vi.view}.png")
        files.append(f"recon/reprojection_{vi.view}.png")
    return {
        "model": "fixture: simulator CT (not a reconstruction)",
        "views_used": [v.view for v in views],
        "spacing_mm": float(abs(affine[0, 0])),
        "shape": list(labels.shape[::-1]),
        "consistency": {
            "score": verdict.score,
            "threshold": verdict.threshold,
            "per_view": verdict.per_view,
            "registration_residual_mm": verdict.registration_residual_mm,
            "consistent": verdict.consistent,
        },
        "files": files,
    }


def _to_u8(a: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(a, [1, 99])
    return (np.clip((a - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)


def run_service(case: Path, outbox: Path) -> Path:
    """Drop the case's films into an inbox and run the real service once (``xr3d watch --once``)."""
    work = outbox.parent / f".{outbox.name}-service"
    shutil.rmtree(work, ignore_errors=True)
    inbox = work / "inbox"
    inbox.mkdir(parents=True)
    old = time.time() - 120  # already stable: the service need not wait for the copy to settle
    for name in VIEW_FILES.values():
        if (case / name).is_file():
            shutil.copyfile(case / name, inbox / name)
            os.utime(inbox / name, (old, old))
    cmd = [
        sys.executable,
        "-m",
        "appliance.cli.main",
        "watch",
        "--inbox",
        str(inbox),
        "--outbox",
        str(outbox),
    ]
    cmd += ["--state", str(work / "state"), "--once"]
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)
    uid = json.loads((case / "truth.json").read_text())["study_instance_uid"]
    shutil.rmtree(work, ignore_errors=True)
    return outbox / uid


def build_study(case: Path, outbox: Path, *, with_recon: bool = True) -> Path:
    """``outbox/<StudyInstanceUID>/`` from a simulated case folder (see module docstring)."""
    study = run_service(case, outbox)
    doc = json.loads((study / "result.json").read_text())
    if with_recon and doc.get("reconstruction") is None:
        films = doc["films"]
        doc["reconstruction"] = _recon(case, study, films)
        flags = doc["flags"]
        flags["reasons"] = [r for r in flags.get("reasons", []) if r != "reconstruction_unavailable"]
        flags.setdefault("stages", {})["reconstruction"] = {
            "status": "done",
            "detail": "test fixture: the simulator's CT stands in for a reconstruction",
        }
        doc["files"] = sorted({*doc.get("files", []), *doc["reconstruction"]["files"]})
        (study / "result.json").write_text(json.dumps(doc, indent=2) + "\n")
    return study


def cached_study_source(cache_root: Path, seed: int = SEED) -> Path:
    """A processed study built once per machine under ``cache_root`` (pytest's cache); returns it."""
    root = cache_root / f"gui-study-{seed}-{_inputs_digest()}"
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = root / "done.json"
        if done.is_file():
            return root / "outbox" / json.loads(done.read_text())["uid"]
        shutil.rmtree(root / "case", ignore_errors=True)
        shutil.rmtree(root / "outbox", ignore_errors=True)
        case = simulate_case(seed, root / "case")
        study = build_study(case, root / "outbox")
        done.write_text(json.dumps({"uid": study.name}))
        return study


def copy_study(src: Path, outbox: Path) -> Path:
    """A private copy of a cached study in ``outbox`` (tests write corrections into it)."""
    outbox.mkdir(parents=True, exist_ok=True)
    dst = outbox / src.name
    shutil.copytree(src, dst)
    return dst


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def correction_screenshot(
    outbox: Path, uid: str, out: Path, landmark: str = "MTP", dy_px: float = 14.0
) -> Path:
    """docs/gui/correction.png: the window with one landmark moved (unsaved), zoomed on the knee.

    Offscreen Qt; the move goes through the same handle API a mouse drag does."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtWidgets import QApplication

    from gui.app import make_app
    from gui.main_window import MainWindow

    make_app()
    w = MainWindow(outbox, "docs")
    w.resize(1600, 1000)
    w.show()
    QApplication.processEvents()
    if not w.select_uid(uid):
        raise FileNotFoundError(uid)
    fv = w.film_view
    c, r = fv.points[landmark]
    fv.move_landmark(landmark, c, r + dy_px)
    fv._handle_pressed(landmark)
    fv.fit()
    fv.zoom(5.0)
    fv.centerOn(c, r)
    QApplication.processEvents()
    w.grab().save(str(out), "PNG")
    w.session = None  # nothing to ask about when the window goes
    return out
