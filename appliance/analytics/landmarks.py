"""Landmark names shared by the simulator's truth, the models and the analytics engine.

Abbreviations follow ../shared/reference/alignment.md. "Medial" and "lateral" are per leg.
"""

from __future__ import annotations

from typing import Final

# Landmarks read on an AP film (and present in 3D).
FHC: Final = "FHC"  # femoral head centre
FKC: Final = "FKC"  # femoral knee centre (intercondylar notch centre at joint level)
MDFC: Final = "MDFC"  # most distal point of the medial femoral condyle
LDFC: Final = "LDFC"  # most distal point of the lateral femoral condyle
MTP: Final = "MTP"  # medial tibial plateau edge
LTP: Final = "LTP"  # lateral tibial plateau edge
TKC: Final = "TKC"  # tibial knee centre (midpoint of the tibial spines)
AC: Final = "AC"  # ankle centre (centre of the talar dome / plafond)

LANDMARKS_2D: Final[tuple[str, ...]] = (FHC, FKC, MDFC, LDFC, MTP, LTP, TKC, AC)

# 3D-only landmarks.
MEC: Final = "MEC"  # medial epicondyle (sulcus / prominence)
LEC: Final = "LEC"  # lateral epicondyle
MPC: Final = "MPC"  # most posterior point of the medial femoral condyle
LPC: Final = "LPC"  # most posterior point of the lateral femoral condyle
MTPA: Final = "MTPA"  # anterior edge of the medial tibial plateau (tibial slope)
MTPP: Final = "MTPP"  # posterior edge of the medial tibial plateau (tibial slope)
MMAL: Final = "MMAL"  # tip of the medial malleolus
LMAL: Final = "LMAL"  # tip of the lateral malleolus

LANDMARKS_3D: Final[tuple[str, ...]] = (*LANDMARKS_2D, MEC, LEC, MPC, LPC, MTPA, MTPP, MMAL, LMAL)

DESCRIPTIONS: Final[dict[str, str]] = {
    FHC: "femoral head centre",
    FKC: "femoral knee centre",
    MDFC: "medial distal femoral condyle",
    LDFC: "lateral distal femoral condyle",
    MTP: "medial tibial plateau edge",
    LTP: "lateral tibial plateau edge",
    TKC: "tibial knee centre",
    AC: "ankle centre",
    MEC: "medial epicondyle",
    LEC: "lateral epicondyle",
    MPC: "medial posterior condyle",
    LPC: "lateral posterior condyle",
    MTPA: "medial tibial plateau, anterior edge",
    MTPP: "medial tibial plateau, posterior edge",
    MMAL: "medial malleolus tip",
    LMAL: "lateral malleolus tip",
}
