"""``xr3d measure`` through the CLI entry point and as a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from appliance.analytics.io import load_measure_input, measure, measurement_to_json
from appliance.analytics.synthetic import LegSpec, film_2d, leg_3d, synthetic_film
from appliance.cli.main import main
from appliance.errors import InputError

XR3D = Path(sys.executable).with_name("xr3d")
SPEC = LegSpec(mldfa=88.0, mpta=85.0, jlca=1.0)


def _write(tmp_path: Path, doc: object, name: str = "lm.json") -> Path:
    p = tmp_path / name
    p.write_text(json.dumps(doc), encoding="utf-8")
    return p


def _doc() -> dict:
    return {
        "side": "R",
        "pixel_spacing_mm": [0.5, 0.5],
        "magnification": 1.0,
        "landmarks_2d": film_2d(SPEC, "R", (0.5, 0.5)),
        "landmarks_3d": {k: v.tolist() for k, v in leg_3d(SPEC, "R").items()},
    }


def test_json_output_schema(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["measure", str(_write(tmp_path, _doc())), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for section in ("angles_2d", "angles_3d"):
        for key in ("mHKA", "mLDFA", "MPTA", "JLCA", "aHKA", "JLO", "MAD_mm"):
            assert isinstance(out[section][key], float)
    assert out["angles_2d"]["mHKA"] == pytest.approx(SPEC.mhka, abs=1e-9)
    assert out["angles_3d"]["MPTA"] == pytest.approx(85.0, abs=1e-9)
    # aHKA -3 (varus), JLO 173 (apex distal): type I.
    assert out["cpak"] == {
        "type": 1,
        "label": "I",
        "ahka_category": "varus",
        "jlo_category": "apex_distal",
        "borderline": ["II"],  # JLO 173 is clear of 177; aHKA -3 is 1 deg from neutral (type II)
    }
    assert out["cpak_source"] == "2d"
    assert out["missing"] == {"2d": {}, "3d": {}}
    assert out["side"] == "R" and out["apparent_side_2d"] == "R" and out["side_from_landmarks_3d"] == "R"


def test_table_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["measure", str(_write(tmp_path, _doc()))]) == 0
    text = capsys.readouterr().out
    assert (
        "mHKA (deg)" in text and "-4.0" in text and "CPAK (2D)" in text and "I (varus, apex distal)" in text
    )


def test_missing_landmarks_reported_and_strict_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = _doc()
    del doc["landmarks_3d"]
    doc["landmarks_2d"]["AC"] = None
    path = _write(tmp_path, doc)
    assert main(["measure", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["angles_2d"]["MPTA"] is None and out["missing"]["2d"]["MPTA"] == ["AC"]
    assert out["angles_3d"] is None and out["cpak"] is None
    assert main(["measure", str(path), "--strict"]) == 2
    assert "[missing_landmarks]" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("{not json", "bad_json"),
        ('{"landmarks_2d": {"HIP": [1, 2]}, "pixel_spacing_mm": 0.5}', "unknown_landmark"),
        ('{"side": "L"}', "no_landmarks"),
        ('{"landmarks_2d": {"FHC": [1, "a"]}}', "bad_coordinates"),
        ('{"landmarks_2d": {"FHC": [1, 2]}, "pixel_spacing_mm": -1}', "bad_spacing"),
        ('{"landmarks_2d": {"FHC": [1, 2]}, "side": "up"}', "bad_side"),
        ("[1, 2]", "bad_schema"),
    ],
)
def test_bad_input_exit_2_with_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, reason: str
) -> None:
    p = tmp_path / "bad.json"
    p.write_text(content, encoding="utf-8")
    assert main(["measure", str(p)]) == 2
    assert f"[{reason}]" in capsys.readouterr().err


def test_missing_file_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["measure", str(tmp_path / "nope.json")]) == 2
    assert "[file_not_found]" in capsys.readouterr().err


def test_no_spacing_keeps_angles_drops_mm(tmp_path: Path) -> None:
    doc = _doc()
    del doc["pixel_spacing_mm"]
    res = measure(load_measure_input(_write(tmp_path, doc)))
    assert res.angles_2d is not None
    assert res.angles_2d.mhka == pytest.approx(SPEC.mhka, abs=1e-9)
    assert res.angles_2d.mad_mm is None and res.angles_2d.femoral_mech_axis_mm is None
    assert any("pixel_spacing" in n for n in measurement_to_json(res)["notes"])


def test_3d_only_file_gives_3d_cpak(tmp_path: Path) -> None:
    doc = _doc()
    del doc["landmarks_2d"]
    out = measurement_to_json(measure(load_measure_input(_write(tmp_path, doc))))
    assert out["angles_2d"] is None and out["cpak_source"] == "3d" and out["cpak"]["label"] == "I"


def test_parse_rejects_condyle_points_of_wrong_type() -> None:
    from appliance.analytics.io import parse_measure_input

    with pytest.raises(InputError):
        parse_measure_input({"landmarks_3d": {"FHC": [0, 0, 0]}, "posterior_condyle_points": [1, 2]})


def test_overlay_and_chart_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = _doc()
    img = synthetic_film(doc["landmarks_2d"], (2000, 700), 0.5)
    film = tmp_path / "film.png"
    Image.fromarray((img * 255).astype(np.uint8)).save(film)
    path = _write(tmp_path, doc)
    ov, chart = tmp_path / "ov.png", tmp_path / "chart.png"
    assert (
        main(["measure", str(path), "--overlay", str(ov), "--image", str(film), "--cpak-chart", str(chart)])
        == 0
    )
    with Image.open(ov) as im:
        assert im.size == (700, 2000)
    assert chart.stat().st_size > 1000
    assert main(["measure", str(path), "--overlay", str(ov)]) == 2
    assert "[bad_arguments]" in capsys.readouterr().err


def test_subprocess_entry_point(tmp_path: Path) -> None:
    path = _write(tmp_path, _doc())
    proc = subprocess.run(
        [str(XR3D), "measure", str(path), "--json"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["cpak"]["label"] == "I"
    bad = subprocess.run(
        [str(XR3D), "measure", str(tmp_path / "missing.json")], capture_output=True, text=True, check=False
    )
    assert bad.returncode == 2 and "[file_not_found]" in bad.stderr
    helptext = subprocess.run([str(XR3D), "--help"], capture_output=True, text=True, check=False).stdout
    assert "measure" in helptext
