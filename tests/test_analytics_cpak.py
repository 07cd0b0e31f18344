"""CPAK numbering and boundaries exactly as alignment.md (MacDessi et al. 2021)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.analytics.cpak import BORDERLINE_DEG, borderline_types, cpak_display, cpak_type
from appliance.errors import InputError

# Cell centres: (aHKA, JLO) -> expected type; rows apex distal/neutral/proximal, columns varus/neutral/valgus.
CELLS = [
    (-5.0, 172.0, 1, "I", "varus", "apex_distal"),
    (0.0, 172.0, 2, "II", "neutral", "apex_distal"),
    (5.0, 172.0, 3, "III", "valgus", "apex_distal"),
    (-5.0, 180.0, 4, "IV", "varus", "neutral"),
    (0.0, 180.0, 5, "V", "neutral", "neutral"),
    (5.0, 180.0, 6, "VI", "valgus", "neutral"),
    (-5.0, 188.0, 7, "VII", "varus", "apex_proximal"),
    (0.0, 188.0, 8, "VIII", "neutral", "apex_proximal"),
    (5.0, 188.0, 9, "IX", "valgus", "apex_proximal"),
]


@pytest.mark.parametrize(("ahka", "jlo", "number", "label", "acat", "jcat"), CELLS)
def test_every_cell(ahka: float, jlo: float, number: int, label: str, acat: str, jcat: str) -> None:
    c = cpak_type(ahka, jlo)
    assert (c.type, c.label, c.ahka_category, c.jlo_category) == (number, label, acat, jcat)
    assert c.to_dict() == {
        "type": number,
        "label": label,
        "ahka_category": acat,
        "jlo_category": jcat,
        "borderline": [],  # every cell centre is >= 3 deg from a boundary
    }
    assert c.display == label


@pytest.mark.parametrize(
    ("ahka", "expected"),
    [(-2.0, "neutral"), (2.0, "neutral"), (-2.0001, "varus"), (2.0001, "valgus"), (-1.9999, "neutral")],
)
def test_ahka_boundaries_are_neutral(ahka: float, expected: str) -> None:
    assert cpak_type(ahka, 180.0).ahka_category == expected


@pytest.mark.parametrize(
    ("jlo", "expected"),
    [
        (177.0, "neutral"),
        (183.0, "neutral"),
        (176.9999, "apex_distal"),
        (183.0001, "apex_proximal"),
    ],
)
def test_jlo_boundaries_are_neutral(jlo: float, expected: str) -> None:
    assert cpak_type(0.0, jlo).jlo_category == expected


@pytest.mark.parametrize(
    ("ahka", "jlo", "label"),
    [
        (-2.0, 177.0, "V"),
        (2.0, 183.0, "V"),
        (-2.0, 183.0, "V"),
        (2.0, 177.0, "V"),
        (-2.5, 177.0, "IV"),
        (2.5, 183.0, "VI"),
        (-2.0, 176.5, "II"),
        (2.0, 183.5, "VIII"),
    ],
)
def test_corner_boundaries(ahka: float, jlo: float, label: str) -> None:
    assert cpak_type(ahka, jlo).label == label


def test_float_noise_at_boundary_counts_as_neutral() -> None:
    # Angles computed through atan2 land a few ulps off a boundary the geometry puts exactly on it.
    assert cpak_type(-2.0 - 1e-13, 183.0 + 1e-13).label == "V"
    assert cpak_type(2.0 + 1e-13, 177.0 - 1e-13).label == "V"
    # ...but a real difference, however small clinically, still counts.
    assert cpak_type(-2.0 - 1e-6, 183.0 + 1e-6).label == "VII"


def test_typical_healthy_varus_knee_is_type_one() -> None:
    # MPTA 85, mLDFA 88: aHKA -3 (varus), JLO 173 (apex distal) -> type I.
    assert cpak_type(85.0 - 88.0, 85.0 + 88.0).label == "I"


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_rejected(bad: float) -> None:
    with pytest.raises(InputError):
        cpak_type(bad, 180.0)
    with pytest.raises(InputError):
        cpak_type(0.0, bad)


@pytest.mark.parametrize(
    ("ahka", "jlo", "near"),
    [
        (-1.6, 180.0, ("IV",)),  # 0.4 deg from varus
        (2.9, 180.0, ("V",)),  # 0.9 deg into valgus
        (0.0, 176.5, ("V",)),  # 0.5 deg below the JLO boundary
        (-2.3, 182.5, ("V", "VII", "VIII")),  # near a corner: both angles within 1 deg
        (0.0, 180.0, ()),
        (-3.1, 180.0, ()),  # 1.1 deg from the boundary: clear
    ],
)
def test_borderline_names_the_types_within_one_degree(ahka: float, jlo: float, near: tuple[str, ...]) -> None:
    c = cpak_type(ahka, jlo)
    assert c.borderline == near
    assert c.to_dict()["borderline"] == list(near)
    assert c.display == (c.label if not near else f"{c.label} (borderline {'/'.join(near)})")
    assert cpak_type(ahka, jlo, borderline_deg=0.0).borderline == ()


@given(st.floats(-12, 12), st.floats(165, 195), st.floats(-1, 1), st.floats(-1, 1))
def test_borderline_holds_every_type_one_degree_away(ahka: float, jlo: float, da: float, dj: float) -> None:
    """Any knee within BORDERLINE_DEG of this one (in both angles) has this type or a borderline one."""
    c = cpak_type(ahka, jlo)
    other = cpak_type(ahka + da * BORDERLINE_DEG, jlo + dj * BORDERLINE_DEG).type
    assert other == c.type or other in borderline_types(ahka, jlo)
    assert c.type not in borderline_types(ahka, jlo)
    assert cpak_display("II", ["V"]) == "II (borderline V)"
