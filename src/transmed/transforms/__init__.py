"""Preprocessing (reversible) and augmentation pipelines."""
