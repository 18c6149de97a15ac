"""Training: trainer, losses, schedules, checkpointing, cross-validation."""
