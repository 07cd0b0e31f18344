"""Evaluation of trained models on held-out simulated cases (``xr3d eval``)."""
