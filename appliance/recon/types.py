"""Inputs shared by the reconstruction checks: one film with its recorded geometry, one reconstruction."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from appliance.errors import InputError
from appliance.geometry.projection import ProjectionGeometry
from appliance.geometry.volume import Volume

# Label values of the reconstruction's label volume (docs/study-outputs.md).
BACKGROUND = 0
FEMUR = 1
TIBIA = 2
FIBULA = 3
PATELLA = 4
BONE_NAMES: dict[int, str] = {FEMUR: "femur", TIBIA: "tibia", FIBULA: "fibula", PATELLA: "patella"}


@dataclass(frozen=True)
class FilmView:
    """One input film: ``image`` bone bright in [0, 1] (rows, columns), ``view`` one of
    ``knee_ap``, ``knee_lat``, ``longleg_ap``, and the geometry recorded with it."""

    view: str
    image: NDArray[np.float32]
    geometry: ProjectionGeometry

    def __post_init__(self) -> None:
        if self.image.ndim != 2:
            raise InputError(f"{self.view}: film image must be 2D, got shape {self.image.shape}")
        if self.image.shape != (self.geometry.rows, self.geometry.columns):
            raise InputError(
                f"{self.view}: image shape {self.image.shape} does not match the geometry "
                f"({self.geometry.rows}, {self.geometry.columns})"
            )


@dataclass(frozen=True)
class Reconstruction:
    """What a reconstructor returns: an HU volume and a uint8 label volume on the same grid (LPS)."""

    volume: Volume
    labels: Volume
    model: str = "recon/1"
    axial_deg: float | None = None  # the knee-canonical frame's turn (appliance/recon/orientation.py)

    def __post_init__(self) -> None:
        if self.volume.shape != self.labels.shape or not np.allclose(self.volume.affine, self.labels.affine):
            raise InputError("reconstructed volume and labels must share one grid")
