"""Knee CT-like reconstruction from the knee films: data, model, losses, training, evaluation, export."""
