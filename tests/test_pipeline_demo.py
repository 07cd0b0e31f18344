"""``xr3d demo`` end to end on given sample films (``--samples``; the simulated default samples take
minutes to render, so ``make demo`` is what exercises that path): the service pipeline runs once over a
fresh inbox and the table names every study with its angles and CPAK type, and the outbox path."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from service_films import VIEWS, cached_template

from appliance.cli.main import main


@pytest.fixture(scope="module")
def samples(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tpl = cached_template(request.config.cache.mkdir("xr3d_service_template"))
    out = tmp_path_factory.mktemp("samples") / "case"
    out.mkdir()
    for view in VIEWS:
        shutil.copyfile(tpl / f"{view}.dcm", out / f"{view}.dcm")
    shutil.copyfile(tpl / "truth.json", out / "truth.json")
    return out.parent


def test_demo_table_and_outbox(samples: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--samples", str(samples), "--out", str(out), "--workers", "1"]) == 0
    text = capsys.readouterr().out
    assert f"{out / 'outbox'}" in text and "mHKA" in text and "CPAK" in text
    folders = [p for p in (out / "outbox").iterdir() if not p.name.startswith(".")]
    assert len(folders) == 1
    doc = json.loads((folders[0] / "result.json").read_text())
    truth = json.loads((samples / "case" / "truth.json").read_text())
    # The table's first row is the measured study (named by its simulator seed), the second the truth.
    row = next(line for line in text.splitlines() if line.startswith(str(truth["seed"])))
    assert f"{doc['angles_2d']['mHKA']:+.1f}" in row
    assert (doc["cpak"] or {}).get("label", "n/a") in row
    near = (doc["cpak"] or {}).get("borderline") or []
    assert ("CPAK borderline " + "/".join(near) in row) == bool(near)
    assert "simulated" in text

    # A second run starts from a fresh inbox/outbox and gives the same numbers (deterministic on CPU).
    assert main(["demo", "--samples", str(samples), "--out", str(out), "--workers", "1", "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert [s["angles_2d"] for s in again["studies"]] == [doc["angles_2d"]]


def test_demo_without_films_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["demo", "--samples", str(tmp_path / "empty"), "--out", str(tmp_path / "d")]) == 2
    assert "demo_samples_missing" in capsys.readouterr().err
