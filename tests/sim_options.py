"""Simulator options shared by tests that render their own long-leg film (kept cheap: 0.7 mm pitch,
coarse volumes, one leg, no CT written)."""

from __future__ import annotations

from typing import Final

from export.simulator.case import CaseOptions

FAST_LONGLEG: Final = CaseOptions(
    views=("longleg",),
    write_ct=False,
    longleg_pitch=0.7,
    leg_spacing=2.0,
    knee_spacing=1.0,
    contralateral=False,
    preview_max_px=300,
)
