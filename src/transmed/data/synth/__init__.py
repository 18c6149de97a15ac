"""Synthetic BraTS-like cohort on real anatomy (MNI ICBM152 2009a, shipped with nilearn).

``generate_cohort(out_dir, n_cases, seed)`` writes ``BraTS2021_XXXXX`` folders (four int16
contrasts, a uint8 label map with 1 NCR / 2 ED / 4 ET, and ``generation.json``);
``generate_case(seed, index)`` returns one case in memory. Modules, in pipeline order:
``anatomy`` (template, output grid), ``deformation`` (affine, elastic, mass effect), ``tumour``
(core, necrosis, rim, oedema along WM), ``contrast`` (intensities, bias, noise), ``case``,
``io`` (BraTS layout writer), ``cohort`` (parallel generation).
"""

from transmed.data.synth.case import SynthCase, SynthConfig, case_id, generate_case
from transmed.data.synth.cohort import generate_cohort
from transmed.data.synth.io import is_complete, write_case

__all__ = [
    "SynthCase",
    "SynthConfig",
    "case_id",
    "generate_case",
    "generate_cohort",
    "is_complete",
    "write_case",
]
