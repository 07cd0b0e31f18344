"""Studies run on the simulator: rotation drift of 2D angles, documentation examples."""
