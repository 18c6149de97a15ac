"""Moved to :mod:`transmed.io.dicom.seg` (the DICOM package); this alias keeps old imports
working for a while. New code imports ``transmed.io.dicom.seg``."""

import sys

from transmed.io.dicom import seg as _seg

sys.modules[__name__] = _seg  # the same module object: attributes and monkeypatches agree
