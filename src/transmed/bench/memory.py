"""Moved to :mod:`transmed.inference.memory_probe`: the predictor measures memory with it, and
runtime code never imports ``bench``. The benchmarks import it through this alias."""

import sys

from transmed.inference import memory_probe as _memory_probe

sys.modules[__name__] = _memory_probe  # the same module object
