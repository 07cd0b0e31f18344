"""Label values of the simulator's label volumes (also written to truth.json)."""

from __future__ import annotations

from typing import Final

AIR: Final = 0
SOFT_TISSUE: Final = 1
FEMUR: Final = 2
TIBIA: Final = 3
FIBULA: Final = 4
PATELLA: Final = 5
FOOT: Final = 6  # talus and the rest of the foot
PELVIS: Final = 7
METAL: Final = 8

NAMES: Final[dict[int, str]] = {
    AIR: "air",
    SOFT_TISSUE: "soft_tissue",
    FEMUR: "femur",
    TIBIA: "tibia",
    FIBULA: "fibula",
    PATELLA: "patella",
    FOOT: "talus_foot",
    PELVIS: "pelvis",
    METAL: "metal",
}
