"""What the surgeon edits: one study's landmarks on its films, measured live, saved as a correction.

Holds the study, the film pixels (loaded when a film is first shown), the landmark points being edited
and their measurement; the widgets only display it. Every landmark move re-measures with
``gui.corrections.measure`` (the pipeline's own ``measure_2d`` call).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from appliance.analytics.results import Angles2D
from gui.corrections import (
    Correction,
    Points,
    latest_correction,
    measure,
    measure_knee,
    original_knee_points,
    original_points,
    save_correction,
)
from gui.film_image import load_unit_image, quantise
from gui.study import Study, load_study

log = logging.getLogger(__name__)


@dataclass
class EditSession:
    """Mutable editing state of one open study (lives in the GUI, not shared)."""

    study: Study
    view: str
    baseline: Points
    points: Points
    correction: Correction | None
    films: dict[str, NDArray[np.uint16]] = field(default_factory=dict)
    knee_baseline: dict[str, Points] = field(default_factory=dict)
    knee_points: dict[str, Points] = field(default_factory=dict)
    """Knee AP / lateral film landmarks (knee view -> points), edited like the long-leg film's."""

    @classmethod
    def open(cls, folder: Path) -> EditSession:
        study = load_study(folder)
        view = next((v for v in study.landmarks if v in study.films and study.landmarks[v]), None)
        view = view or next(iter(study.films), "longleg_ap")
        corr = latest_correction(study)
        base = original_points(study, view)
        if corr is not None and view in corr.landmarks:
            base = {**base, **corr.landmarks[view]}
        knees: dict[str, Points] = {}
        for kv in study.knee_films:
            pts = original_knee_points(study, kv)
            if pts:
                knees[kv] = {**pts, **(corr.landmarks.get(kv, {}) if corr is not None else {})}
        return cls(
            study,
            view,
            dict(base),
            dict(base),
            corr,
            knee_baseline={k: dict(v) for k, v in knees.items()},
            knee_points={k: dict(v) for k, v in knees.items()},
        )

    def film_pixels(self, view: str) -> NDArray[np.uint16] | None:
        """Quantised [0, 1] pixels of ``view`` (read once, then cached)."""
        if view not in self.films:
            info = self.study.films.get(view)
            if info is None or info.path is None:
                return None
            t0 = time.perf_counter()
            self.films[view] = quantise(load_unit_image(info.path))
            log.debug("film %s read in %.3f s", view, time.perf_counter() - t0)
        return self.films[view]

    def measured(self) -> Angles2D:
        return measure(self.study, self.view, self.points)

    def original(self) -> Angles2D:
        return measure(self.study, self.view, original_points(self.study, self.view))

    def knee_measured(self, view: str) -> dict[str, float | None]:
        return measure_knee(self.study, view, self.knee_points.get(view, {}))

    def knee_original(self, view: str) -> dict[str, float | None]:
        return measure_knee(self.study, view, original_knee_points(self.study, view))

    @property
    def dirty(self) -> bool:
        return self.points != self.baseline or self.knee_points != self.knee_baseline

    @property
    def differs_from_pipeline(self) -> bool:
        return self.points != original_points(self.study, self.view) or any(
            pts != original_knee_points(self.study, v) for v, pts in self.knee_points.items()
        )

    def save(self, who: str) -> Path:
        path = save_correction(self.study, self.view, self.points, who, knee_points=self.knee_points)
        self.correction = latest_correction(self.study)
        self.baseline = dict(self.points)
        self.knee_baseline = {k: dict(v) for k, v in self.knee_points.items()}
        return path

    def revert_to_pipeline(self) -> None:
        self.points = original_points(self.study, self.view)
        self.knee_points = {v: original_knee_points(self.study, v) for v in self.knee_points}
