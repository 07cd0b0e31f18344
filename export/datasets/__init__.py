"""Training data for the landmark model: augmentation records, heatmap targets, simulated samples.

numpy / scipy / Pillow only (no torch), so everything here is testable on its own and reusable by the
torch Dataset that wraps it.
"""
