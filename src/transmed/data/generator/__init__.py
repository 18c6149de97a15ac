"""Domain-randomised training pairs for the generalist model (in the spirit of SynthSeg).

- :mod:`.labelmaps`: a seeded pool of fine label maps (deformed MNI anatomy + a wide tumour mix
  from :mod:`transmed.data.synth`, with the distance outside the brain for extra-cerebral
  layers), generated once and cached on disk;
- :mod:`.appearance`: per-image random intensity tables (near real MR orderings, or random);
- :mod:`.sample`: one image/target pair from a label map (pure function of an RNG);
- :mod:`.dataset`: the torch ``Dataset`` seeded per (seed, epoch, sample).
"""

from transmed.data.generator.appearance import GEN_CLASSES
from transmed.data.generator.dataset import GeneratorDataset
from transmed.data.generator.labelmaps import LabelMap, LabelMapPool, make_labelmap
from transmed.data.generator.sample import GeneratorConfig, draw_sample, fine_to_internal

__all__ = [
    "GEN_CLASSES",
    "GeneratorConfig",
    "GeneratorDataset",
    "LabelMap",
    "LabelMapPool",
    "draw_sample",
    "fine_to_internal",
    "make_labelmap",
]
