"""What every reader produces: :class:`Case` (file paths per modality) and :class:`DatasetIndex`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from transmed.data.labels import CONVENTIONS, MODALITIES, LabelConvention

#: Layout names, in the order detection reports them.
LAYOUTS: tuple[str, ...] = ("brats2021", "brats2023", "msd", "nnunet")


@dataclass
class Case:
    """One examination: where each modality and the label are, and how to read the label.

    ``images`` maps each modality found (keys from :data:`MODALITIES`, in that order) to its
    file. In MSD's 4D layout all modalities point at the same file and ``channels`` gives each
    one's index on the 4th axis (``n_channels`` is the channel count the file must have); for
    3D layouts ``channels`` is empty. ``missing`` maps each absent modality to the file that was
    looked for. ``label`` is None for unlabelled cases (test sets, clinical data).
    """

    case_id: str
    layout: str
    images: dict[str, Path]
    label: Path | None = None
    convention: LabelConvention | None = None  # None: the layout's default convention
    channels: dict[str, int] = field(default_factory=dict)
    n_channels: int = 0
    missing: dict[str, Path] = field(default_factory=dict)
    subset: str = ""  # "train"/"test" where the layout separates them (imagesTr/imagesTs)

    def __post_init__(self) -> None:
        if self.convention is None:
            self.convention = CONVENTIONS[self.layout]

    @property
    def modalities(self) -> tuple[str, ...]:
        """Modalities found, in :data:`MODALITIES` order."""
        return tuple(m for m in MODALITIES if m in self.images)

    @property
    def has_label(self) -> bool:
        return self.label is not None


@dataclass
class DatasetIndex:
    """All cases of a dataset folder and everything wrong with them (from headers only).

    ``problems`` holds ``(case_id or path, message)`` pairs; a case with any problem is skipped
    by :func:`transmed.data.loading.iter_cases` (or makes it raise in strict mode).
    """

    root: Path
    layout: str
    cases: list[Case] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)

    def problems_of(self, case_id: str) -> list[str]:
        return [msg for key, msg in self.problems if key == case_id]

    @property
    def bad_case_ids(self) -> set[str]:
        ids = {c.case_id for c in self.cases}
        return {key for key, _ in self.problems if key in ids}

    @property
    def good_cases(self) -> list[Case]:
        """Cases with no reported problem."""
        bad = self.bad_case_ids
        return [c for c in self.cases if c.case_id not in bad]

    def __len__(self) -> int:
        return len(self.cases)


def index_report(index: DatasetIndex) -> list[str]:
    """Human-readable lines: layout, case count, one line per case, then each case's problems.

    A case line reads ``<id>  <t1 t1ce t2 flair, '-' for a missing one>  label|no label``
    (plus ``[test]`` for cases from imagesTs); problems follow indented with ``!``; problems
    that belong to no case (stray files) come last.
    """
    bad = index.bad_case_ids
    lines = [
        f"root: {index.root}",
        f"layout: {index.layout}",
        f"cases: {len(index.cases)} ({len(bad)} with problems)",
    ]
    width = max((len(c.case_id) for c in index.cases), default=0)
    for case in index.cases:
        found = " ".join(m if m in case.images else "-" * len(m) for m in MODALITIES)
        label = "label" if case.has_label else "no label"
        subset = f" [{case.subset}]" if case.subset == "test" else ""
        lines.append(f"  {case.case_id:<{width}}  {found}  {label}{subset}")
        lines += [f"      ! {msg}" for msg in index.problems_of(case.case_id)]
    ids = {c.case_id for c in index.cases}
    other = [(key, msg) for key, msg in index.problems if key not in ids]
    if other:
        lines.append("other problems:")
        lines += [f"  ! {key}: {msg}" for key, msg in other]
    return lines
