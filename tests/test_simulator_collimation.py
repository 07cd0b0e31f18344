"""The collimated field keeps the bone a film is for open, and truth calls a point under a blade hidden."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.geometry.projection import ProjectionGeometry
from export.datasets.landmark_samples import entry_in_field, entry_open_field
from export.simulator.case import (
    PHYS_KIND,
    VIEW_INDEX,
    CaseOptions,
    generate_case,
    options_from_dict,
    sample_case,
)
from export.simulator.collimation import bone_outline, field_uv, in_open_field, keep_open
from export.simulator.film_artifacts import CollimationRecord, field_mask, sample_artifacts

SHAPE = (900, 400)
PITCH = 0.5


def _coll(left: float, right: float, top: float, bottom: float, angle: float) -> CollimationRecord:
    return CollimationRecord(
        top=top,
        bottom=bottom,
        left=left,
        right=right,
        angle_deg=angle,
        blade_transmission=0.005,
        penumbra_mm=1.0,
        shutter="black",
    )


blade = st.floats(0.0, 0.3)


@settings(max_examples=60, deadline=None)
@given(blade, blade, blade, blade, st.floats(-1.5, 1.5), st.integers(0, 2**31 - 1))
def test_keep_open_only_opens_and_keeps_every_point_inside_with_margin(
    left: float, right: float, top: float, bottom: float, angle: float, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    keep = np.column_stack([rng.uniform(40, 360, 12), rng.uniform(60, 840, 12)])
    c = _coll(left, right, top, bottom, angle)
    o = keep_open(c, SHAPE, PITCH, keep, margin_mm=5.0)
    assert o.left <= c.left and o.right <= c.right and o.top <= c.top and o.bottom <= c.bottom
    assert in_open_field(keep, SHAPE, o).all()
    # the margin: each point at least 5 mm + 2 penumbras from every blade in the field's frame
    uv = field_uv(keep, SHAPE, angle)
    m = (5.0 + 2.0) / PITCH - 1e-6
    cols = SHAPE[1]
    if o.left > 0:
        assert uv[:, 0].min() - (-cols / 2 + o.left * cols) >= m
    if o.right > 0:
        assert (cols / 2 - o.right * cols) - uv[:, 0].max() >= m
    # a field that already keeps everything is left as it was
    assert keep_open(o, SHAPE, PITCH, keep, margin_mm=5.0) == o


def test_in_open_field_agrees_with_the_rendered_field_mask() -> None:
    c = _coll(0.2, 0.1, 0.05, 0.15, 1.2)
    mask = field_mask(SHAPE, PITCH, c)
    rng = np.random.default_rng(3)
    pts = np.column_stack([rng.uniform(0, SHAPE[1] - 1, 2000), rng.uniform(0, SHAPE[0] - 1, 2000)])
    inside = in_open_field(pts, SHAPE, c)
    seen = mask[np.round(pts[:, 1]).astype(int), np.round(pts[:, 0]).astype(int)]
    # away from the penumbra the two agree exactly; under a blade the film gets < 1 % of the fluence
    clear = np.abs(seen - 0.5) > 0.45
    assert clear.sum() > 1500
    assert np.array_equal(inside[clear], seen[clear] > 0.5)
    assert in_open_field(pts, SHAPE, None).all()


def test_bone_outline_finds_the_outermost_bone_of_each_row() -> None:
    b = np.zeros((50, 80), np.float32)
    b[10:40, 20:30] = 8.0  # one leg
    b[10:40, 55:62] = 8.0  # the other
    b[25, 70] = 1.0  # soft-tissue-like path: not bone
    out = bone_outline(b, (0, 49), step=1)
    assert set(out[:, 0]) == {20.0, 61.0}
    assert out[:, 1].min() == 10 and out[:, 1].max() == 39
    assert bone_outline(b, (0, 5)).shape == (0, 2)


def test_old_truth_with_a_blade_over_a_landmark_reads_it_as_hidden() -> None:
    """Cases simulated before the fix recorded in_field True under a blade; the loader corrects it from
    the recorded field, padding included."""
    coll = _coll(0.0, 0.25, 0.0, 0.0, 0.0)
    entry = {
        "rows": 900 + 10,
        "columns": 400 + 6,
        "artifacts": {
            "collimation": json.loads(json.dumps(coll.__dict__)),
            "padding": {"top": 10, "bottom": 0, "left": 6, "right": 0},
        },
        "landmarks_2d": {"A": [106.0, 500.0], "B": [6 + 360.0, 500.0], "C": [6 + 280.0, 10.0]},
        "in_field": {"A": True, "B": True, "C": False},
    }
    assert entry_in_field(entry, ["A", "B", "C"]).tolist() == [True, False, False]
    assert entry_open_field({"artifacts": {}}, [[1.0, 2.0]]).tolist() == [True]


def test_simulated_long_leg_film_keeps_both_legs_open(tmp_path: Path) -> None:
    """A real (coarse) simulated case whose sampled left blade would reach into the bone: the recorded
    field is opened, every landmark on the detector is inside it, and in_field says so."""
    seed = 900202  # demo/docs range; its sampled blades are (0.176, 0.127) of the width
    opts = CaseOptions(
        views=("longleg",),
        write_ct=False,
        longleg_pitch=1.0,
        leg_spacing=2.0,
        knee_spacing=1.0,
        preview_max_px=300,
    )
    folder = generate_case(seed, tmp_path, opts)
    doc = json.loads((folder / "truth.json").read_text())
    assert options_from_dict(doc["options"]) == opts  # the case can be made again from its truth
    entry = doc["films"]["longleg_ap"]
    pad = entry["artifacts"].get("padding") or {}
    shape = (
        entry["rows"] - pad.get("top", 0) - pad.get("bottom", 0),
        entry["columns"] - pad.get("left", 0) - pad.get("right", 0),
    )
    rec = sample_case(seed, opts)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 29, VIEW_INDEX["longleg"]]))
    raw = sample_artifacts(
        rng, PHYS_KIND["longleg"], *shape, 1.0, rec.exposures["longleg"], leg_side=rec.params.side
    ).collimation
    got = CollimationRecord(**entry["artifacts"]["collimation"])
    assert raw is not None and got.left < raw.left - 0.05  # opened
    assert (got.top, got.bottom, got.angle_deg) == (raw.top, raw.bottom, raw.angle_deg)  # same sample
    names = list(entry["landmarks_2d"])
    pts = np.array([entry["landmarks_2d"][n] for n in names])
    on_detector = (pts[:, 0] >= 0) & (pts[:, 0] < entry["columns"]) & (pts[:, 1] >= 0)
    assert on_detector.sum() >= 7
    assert entry_open_field(entry, pts[on_detector]).all()
    assert all(entry["in_field"][n] for n, ok in zip(names, on_detector, strict=True) if ok)
    # the calibration sphere this case carries is kept in the field too (it is placed to be seen)
    ball = doc["calibration_ball"]
    assert ball is not None and "longleg" in ball["films"]
    geom = ProjectionGeometry.from_dict(entry["geometry"])
    centre = geom.project(np.array([ball["centre_mm"]]))[0]
    r = 0.5 * ball["diameter_mm"] * geom.magnification_at(np.array(ball["centre_mm"])) / geom.pitch_u_mm
    rim = centre + np.array([[-r, 0.0], [r, 0.0], [0.0, -r], [0.0, r]])
    assert entry_open_field(entry, rim).all()
