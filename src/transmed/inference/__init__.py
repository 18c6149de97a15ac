"""Inference: the one predictor used by the CLI, the demo and the DICOM service."""
