"""Runtime landmark detection (ONNX models through ``engines``; no torch): long-leg films here, knee AP /
lateral films in ``knee_detector``."""

from appliance.landmarks.confidence import LOW_CONFIDENCE
from appliance.landmarks.detector import Detection, LandmarkDetector
from appliance.landmarks.limb_check import LimbCheck, check_lower_limb, require_lower_limb

__all__ = [
    "LOW_CONFIDENCE",
    "Detection",
    "LandmarkDetector",
    "LimbCheck",
    "check_lower_limb",
    "require_lower_limb",
]
