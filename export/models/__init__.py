"""PyTorch model definitions (training side only)."""
