"""Moved to :mod:`transmed.models.checkpoint`, below both training and inference (issue 10:
inference must not import training). This alias keeps old imports working; new code imports
``transmed.models.checkpoint``."""

import sys

from transmed.models import checkpoint as _checkpoint

sys.modules[__name__] = _checkpoint  # the same module object: attributes and monkeypatches agree
