"""Detector family, arch specs, checkpoints, torch inference."""
