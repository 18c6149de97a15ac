"""Evaluation: metrics (pure functions), aggregation, statistics, reports."""
