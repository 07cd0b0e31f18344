"""Training loops and their CLI (``xr3d train``)."""
