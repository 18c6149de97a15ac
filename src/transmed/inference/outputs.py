"""Where ``predict`` will write, checked before the model loads: never over its own inputs or a
dataset's reference labels (unless ``--overwrite``), and only into a folder it can write to.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from transmed.data.cases import Case
from transmed.inference.inputs import PredictInput


def planned_outputs(
    cases: list[Case], output: Path, *, single_file: bool, probabilities: bool
) -> list[Path]:
    """Every file a NIfTI prediction run will write (see :class:`~.batch.BatchWriter`)."""
    from transmed.data.writing import prediction_path

    labels = [output] if single_file else [prediction_path(output, c.case_id) for c in cases]
    paths = list(labels)
    if probabilities:
        for path in labels:
            ending = ".nii.gz" if path.name.endswith(".nii.gz") else ".nii"
            paths.append(path.parent / f"{path.name[: -len(ending)]}_probabilities{ending}")
    if not single_file:
        paths.append(output / "predict_summary.json")
    return paths


def reference_labels(dataset_root: Path | None, layout: str) -> list[Path]:
    """The dataset's reference label files, found by file name alone (no header is read)."""
    if dataset_root is None or not dataset_root.is_dir():
        return []
    from transmed.data.layouts import SCANNERS

    try:
        cases, _ = SCANNERS[layout](dataset_root)
    except (KeyError, ValueError, OSError):
        return []
    return [c.label for c in cases if c.label is not None]


def _same(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def output_conflicts(
    outputs: list[Path], out_dir: Path, inputs: list[Path], labels: list[Path]
) -> list[str]:
    """What writing ``outputs`` into ``out_dir`` would destroy; empty when nothing.

    An output that is (or links to) an input file or a reference label is a conflict, and so is
    an output folder that holds reference labels (nnU-Net/MSD ``labelsTr``, a BraTS case folder
    with its ``*seg.nii.gz``) even where names do not collide: predictions and ground truth must
    not share a folder.
    """
    problems = []
    protected = [(p, "input") for p in inputs] + [(p, "reference label") for p in labels]
    for out in outputs:
        for path, what in protected:
            if out.resolve() == path.resolve() or _same(out, path):
                problems.append(f"{out} would overwrite the {what} file {path}")
                break
    holding = sorted({str(p) for p in labels if p.parent.resolve() == out_dir.resolve()})
    if holding and not problems:
        problems.append(
            f"{out_dir} holds the dataset's reference label files ({len(holding)}, e.g. "
            f"{holding[0]}); predictions would be mixed with the ground truth"
        )
    return problems


def check_writable(folder: Path) -> None:
    """Refuse an output folder that cannot be written (read-only mount, no permission).

    Probes the folder, or, when it does not exist yet, the nearest existing parent (which must
    let it be created); nothing is left behind and nothing is created.

    Raises:
        ValueError: naming the folder and the operating system's reason.
    """
    probe = folder
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise ValueError(f"output folder {folder}: {probe} is not a folder")
    try:
        fd, name = tempfile.mkstemp(prefix=".transmed-write-test.", dir=probe)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ValueError(f"output folder {folder} is not writable ({probe}: {reason})") from None
    os.close(fd)
    os.unlink(name)


def check_predict_output(
    inputs: PredictInput,
    input_arg: Path | None,
    output: Path,
    *,
    probabilities: bool,
    overwrite: bool,
) -> None:
    """All of ``predict``'s output checks, run before the model loads.

    Raises:
        ValueError: an output that would overwrite an input or a reference label (unless
            ``overwrite``), or an output folder that cannot be written.
    """
    single_file = output.name.endswith((".nii.gz", ".nii"))
    out_dir = output.parent if single_file else output
    if inputs.kind == "nifti" and not overwrite:
        images = [p for c in inputs.cases for p in c.images.values()]
        if input_arg is not None:
            root = Path(input_arg)
            if root.name in ("imagesTs", "imagesTr") and not (root / "imagesTr").exists():
                root = root.parent
            labels = reference_labels(root, inputs.layout)
        else:  # loose files: a BraTS case folder beside them may hold the reference
            folders = {p.parent for p in images}
            labels = [lab for f in folders for lay in ("brats2021", "brats2023")
                      for lab in reference_labels(f, lay)]  # fmt: skip
        outputs = planned_outputs(
            inputs.cases, output, single_file=single_file, probabilities=probabilities
        )
        problems = output_conflicts(outputs, out_dir, images, labels)
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise ValueError(
                f"refusing to write: {problems[0]}{more}; choose another output, or pass "
                "--overwrite to replace them"
            )
    check_writable(out_dir)
