"""Runtime landmark detection on long-leg films (ONNX models through ``engines``; no torch)."""

from appliance.landmarks.detector import Detection, LandmarkDetector

__all__ = ["Detection", "LandmarkDetector"]
