"""Evaluation: metrics (pure functions), aggregation, statistics, reports.

- :mod:`~transmed.evaluation.metrics`: Dice, HD95 (mm), sensitivity, specificity of bool masks;
  :func:`region_metrics` for the BraTS regions WT/TC/ET of two internal label maps.
- :mod:`~transmed.evaluation.lesionwise`: BraTS 2023 lesion-wise Dice and HD95.
- :mod:`~transmed.evaluation.evaluate`: folder evaluation (case matching, CSV + JSON output).
- :mod:`~transmed.evaluation.statistics`: summaries and paired tests (Wilcoxon, t, bootstrap CI).
- :mod:`~transmed.evaluation.cli`: the ``transmed evaluate`` command function.

The names below are exported lazily, so importing this package (e.g. from the CLI) does not
import scipy until a metric is used.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "dice": "metrics",
    "hd95": "metrics",
    "sensitivity": "metrics",
    "specificity": "metrics",
    "mask_metrics": "metrics",
    "region_metrics": "metrics",
    "HD95_ONE_EMPTY_MM": "metrics",
    "lesionwise_metrics": "lesionwise",
    "evaluate_folders": "evaluate",
    "write_report": "evaluate",
    "paired_tests": "statistics",
    "bootstrap_ci": "statistics",
    "summarise": "statistics",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
