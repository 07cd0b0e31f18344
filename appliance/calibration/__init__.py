"""Calibration of film scale from objects of known size (the calibration sphere)."""
