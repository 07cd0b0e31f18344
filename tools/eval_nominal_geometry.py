"""How well a clinic's films (no private geometry block) are put into one frame, on simulated cases.

Two checks per case folder (``case_<seed>`` with knee_ap.dcm, knee_lat.dcm, optionally longleg_ap.dcm and
truth.json):

* ``joint``: the knee films' nominal geometries (appliance.dicomio.nominal_geometry) after the joint-line
  alignment; the true knee centre (truth FKC/TKC midpoint on each film) back-projected to the isocentre
  depth must have the same height in both: prints AP minus lateral (mm).
* ``--study``: the whole ``reconstruct_study`` on the recorded films and on copies with the private block
  removed (truth long-leg 2D landmarks); prints consistency and the 3D angles of both runs and the truth.

    .venv/bin/python -m tools.eval_nominal_geometry CASE_DIR... [--study --out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from appliance.dicomio.geometry_tags import PRIVATE_GROUP
from appliance.dicomio.nominal_geometry import align_joint_line, choose_joint_row, nominal_geometry
from appliance.ingest.dicom_reader import decode_pixels
from appliance.ingest.presentation import bone_bright_unit

KNEE = ("knee_ap", "knee_lat")


def _landmark_row(detector: Any, ds: pydicom.Dataset, image: Any, view: str, side: str) -> float | None:
    """The knee model's FKC/TKC midpoint row (what the study pipeline passes), or None when either is
    low-confidence. The model gets the detector pitch, as the pipeline gives it."""
    pitch = [float(x) for x in ds.ImagerPixelSpacing]
    po = ds.get("PatientOrientation")
    orientation = [str(x) for x in po] if po else None
    det = detector.detect(image, (pitch[0], pitch[1]), view, side=side, patient_orientation=orientation)
    marks = det.landmarks_json()
    if marks["FKC"]["low_confidence"] or marks["TKC"]["low_confidence"]:
        return None
    return 0.5 * (float(marks["FKC"]["row"]) + float(marks["TKC"]["row"]))


def knee_height_gap(case: Path, detector: Any = None) -> float:
    """AP minus lateral height (mm) of the true knee centre in the aligned nominal frames (joint line
    from ``detector``'s knee landmarks when given, else the darkest-row rule)."""
    truth = json.loads((case / "truth.json").read_text())
    z: dict[str, float] = {}
    for v in KNEE:
        ds = pydicom.dcmread(case / f"{v}.dcm")
        nom = nominal_geometry(ds, v, str(truth["side"])[:1].upper())
        if nom is None:
            raise SystemExit(f"{case.name}/{v}: header lacks SID or pitch")
        image = bone_bright_unit(ds, decode_pixels(ds))
        side = str(truth["side"])[:1].upper()
        marks = None if detector is None else _landmark_row(detector, ds, image, v, side)
        row = choose_joint_row(image, nom.geometry.pitch_v_mm, marks)[0]
        g, _ = align_joint_line(nom.geometry, image, row)
        lm = truth["films"][v]["landmarks_projected"]
        px = 0.5 * (np.asarray(lm["FKC"], dtype=np.float64) + np.asarray(lm["TKC"], dtype=np.float64))
        beam = g.normal if float(g.normal @ (g.origin - g.source)) > 0 else -g.normal
        sod = float(-(g.source @ beam))  # the isocentre (origin) is SOD along the beam from the source
        ray = g.pixel_to_mm(np.array([px[0]]), np.array([px[1]]))[0] - g.source
        z[v] = float((g.source + ray * (sod / float(ray @ beam)))[2])
    return z["knee_ap"] - z["knee_lat"]


def study_runs(case: Path, out: Path) -> dict[str, object]:
    from appliance.recon.study import reconstruct_study

    truth = json.loads((case / "truth.json").read_text())
    views = [v for v in (*KNEE, "longleg_ap") if (case / f"{v}.dcm").is_file()]
    stripped = out / case.name / "stripped"
    stripped.mkdir(parents=True, exist_ok=True)
    for v in views:
        ds = pydicom.dcmread(case / f"{v}.dcm")
        for tag in [e.tag for e in ds if e.tag.group == PRIVATE_GROUP]:
            del ds[tag]
        ds.save_as(stripped / f"{v}.dcm")
    lm2d = {"longleg_ap": truth["films"]["longleg_ap"]["landmarks_2d"]} if "longleg_ap" in views else None
    side = str(truth["side"])[:1].upper()
    row: dict[str, object] = {
        "seed": truth["seed"],
        "truth": {k: truth["angles_3d"][k] for k in ("mHKA", "mLDFA", "MPTA")},
    }
    for name, folder in (("recorded", case), ("nominal", stripped)):
        r = reconstruct_study(
            {v: folder / f"{v}.dcm" for v in views}, out / case.name / name, side=side, landmarks_2d=lm2d
        )
        a = r.angles_3d or {}
        row[name] = {
            "consistency": round(r.consistency.score, 4),
            **{k: a.get(k) for k in ("mHKA", "mLDFA", "MPTA")},
        }
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cases", type=Path, nargs="+")
    ap.add_argument("--study", action="store_true", help="also run reconstruct_study recorded vs stripped")
    ap.add_argument("--out", type=Path, default=Path("build/eval_nominal_geometry"))
    ap.add_argument(
        "--knee-landmarks",
        action="store_true",
        help="give the knee landmark model's joint line to the alignment rule, as the pipeline does",
    )
    args = ap.parse_args(argv)
    detector = None
    if args.knee_landmarks:
        from appliance.landmarks.knee_detector import KneeLandmarkDetector

        detector = KneeLandmarkDetector()
    gaps = []
    for case in args.cases:
        gap = knee_height_gap(case, detector)
        gaps.append(gap)
        line: dict[str, object] = {"case": case.name, "knee_height_ap_minus_lat_mm": round(gap, 3)}
        if args.study:
            line["study"] = study_runs(case, args.out)
        sys.stdout.write(json.dumps(line) + "\n")
    g = np.abs(np.array(gaps))
    sys.stdout.write(
        json.dumps({"cases": len(g), "max_abs_mm": float(g.max()), "median_abs_mm": float(np.median(g))})
        + "\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
