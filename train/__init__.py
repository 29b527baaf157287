"""Companion training module (VILA 3-stage recipe on synthetic data): vlm-train (see docs/training.md)."""
