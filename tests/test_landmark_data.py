"""The training set ``xr3d train landmarks`` simulates for itself: seeds inside the training range only,
a known recipe mix, resumable generation (complete cases are kept), and one real simulated case (slow)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from export.datasets.landmark_samples import build_index
from export.simulator.cli import SEED_RANGES
from export.training.landmark_data import (
    MAX_CASES,
    RECIPES,
    ensure_training_cases,
    recipe_for,
    training_seeds,
)


@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, MAX_CASES))
def test_seeds_stay_in_the_training_range(seed: int, n: int) -> None:
    seeds = training_seeds(seed, n)
    lo, hi = SEED_RANGES["train"]
    assert len(set(seeds)) == n and all(lo <= s <= hi for s in seeds)
    assert seeds == training_seeds(seed, n)  # replayable


def test_recipe_mix_and_bad_size() -> None:
    seeds = training_seeds(7, 40)
    mix = Counter(recipe_for(s)[0] for s in seeds)
    assert mix == {"bilateral": 16, "one_leg": 8, "robustness": 8, "left_bilateral": 4, "with_labels": 4}
    opts = dict(RECIPES)
    assert opts["with_labels"].write_ct and not opts["bilateral"].write_ct
    assert not opts["one_leg"].contralateral and opts["robustness"].sampling.implants
    assert opts["left_bilateral"].sampling.side == "left"
    with pytest.raises(ValueError):
        training_seeds(7, 0)


def _fake_case(s: int, root: Path) -> int:
    """Stands in for the renderer in the bookkeeping test only (the slow test renders for real)."""
    case = root / f"case_{s}"
    case.mkdir()
    (case / "longleg_ap.dcm").write_bytes(b"")
    (case / "truth.json").write_text(json.dumps({"seed": s}))
    return s


def test_generation_is_resumable(tmp_path: Path) -> None:
    first = ensure_training_cases(tmp_path, 3, 4, make=_fake_case)
    assert first.generated == 4 and len(first.seeds) == 4
    # An interrupted case (no truth.json) is made again; complete ones are kept.
    (tmp_path / f"case_{first.seeds[1]}" / "truth.json").unlink()
    calls: list[int] = []

    def remake(s: int, root: Path) -> int:
        calls.append(s)
        case = root / f"case_{s}"
        case.mkdir(exist_ok=True)
        (case / "longleg_ap.dcm").write_bytes(b"")
        (case / "truth.json").write_text("{}")
        return s

    again = ensure_training_cases(tmp_path, 3, 6, make=remake)
    assert again.seeds[:4] == first.seeds
    assert sorted(calls) == sorted([first.seeds[1], *again.seeds[4:]])


@pytest.mark.slow
def test_one_real_case_is_a_training_case(tmp_path: Path) -> None:
    ts = ensure_training_cases(tmp_path, 11, 1)
    idx = build_index(tmp_path, "train")
    assert idx.seeds == ts.seeds
    truth = json.loads((tmp_path / f"case_{ts.seeds[0]}" / "truth.json").read_text())
    assert "longleg_ap" in truth["films"]


def test_train_cli_without_data_checks_the_case_count(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from appliance.cli.main import main

    assert main(["train", "landmarks", "--out", str(tmp_path), "--seed", "1", "--cases", "0"]) == 2
    assert "[bad_argument] --cases must be within 1..500" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()


@pytest.mark.slow
def test_train_cli_simulates_its_own_data_then_trains(tmp_path: Path) -> None:
    """``xr3d train landmarks --out DIR --seed S`` (no --data): simulates, trains all three stages (a few
    fixed steps here) and writes the ONNX models."""
    from appliance.cli.main import main

    out = tmp_path / "run"
    args = ["train", "landmarks", "--out", str(out), "--seed", "5", "--cases", "1"]
    rc = main([*args, "--steps", "2", "2", "--fine-steps", "2", "--threads", "1"])
    assert rc == 0
    assert len(list((out / "data").glob("case_*/truth.json"))) == 1
    for name in ("landmarks_whole.onnx", "landmarks_crop.onnx", "landmarks_fine.onnx"):
        assert (out / name).is_file(), name
