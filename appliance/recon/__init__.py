"""Runtime checks and outputs around the knee reconstruction (consistency, registration, meshes, 3D)."""
