"""Runtime landmark detection on long-leg films (ONNX models through ``engines``; no torch)."""

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
