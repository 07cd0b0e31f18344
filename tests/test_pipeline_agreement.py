"""The 2D-vs-3D cross-check that decides whether reconstructed 3D angles are reported (pure function)."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from appliance.pipeline.agreement import AGREEMENT_LIMIT_DEG, COMPARED_ANGLES, angles_agreement

angle = st.floats(min_value=-30.0, max_value=120.0, allow_nan=False)


@given(base=st.fixed_dictionaries({k: angle for k in COMPARED_ANGLES}), delta=st.floats(-20.0, 20.0))
def test_disagreement_is_exactly_a_difference_beyond_the_limit(base: dict[str, float], delta: float) -> None:
    shifted = {**base, "MPTA": base["MPTA"] + delta}
    a = angles_agreement(base, shifted)
    assert a.differences_deg["MPTA"] == shifted["MPTA"] - base["MPTA"]
    assert ("MPTA" in a.disagreeing) == (abs(a.differences_deg["MPTA"]) > AGREEMENT_LIMIT_DEG)
    assert a.agrees == (abs(a.differences_deg["MPTA"]) <= AGREEMENT_LIMIT_DEG)


def test_unmeasured_values_are_not_compared() -> None:
    a = angles_agreement({"mHKA": -3.0, "mLDFA": None, "MPTA": 86.0}, {"mHKA": 10.0, "mLDFA": 70.0})
    assert a.differences_deg == {"mHKA": 13.0}
    assert a.disagreeing == ("mHKA",)
    nan = angles_agreement({"mHKA": math.nan}, {"mHKA": 1.0})
    assert nan.differences_deg == {} and nan.agrees
    assert angles_agreement(None, None).agrees


def test_demo_like_reconstruction_is_withheld() -> None:
    """The values seen on demo study 900002: the film says mLDFA 86.3, the reconstruction 77.8."""
    film = {"mHKA": -3.6, "mLDFA": 86.3, "MPTA": 84.5}
    a = angles_agreement(film, {"mHKA": -3.9, "mLDFA": 77.8, "MPTA": 85.6})
    assert a.disagreeing == ("mLDFA",)
    doc = a.to_json()
    assert doc["limit_deg"] == AGREEMENT_LIMIT_DEG and doc["disagreeing"] == ["mLDFA"]
