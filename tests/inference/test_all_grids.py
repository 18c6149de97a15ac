"""``--all-grids``: the label map on every input series' own grid follows that series' rigid
registration, so it overlays the series as the scanner stored it (TCGA-FG-6692's FLAIR moved
13 mm between series; by headers alone the labels would miss its lesion)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np

from transmed.data.cases import Case
from transmed.inference.batch import _on_series_grids
from transmed.inference.predictor import Prediction


def test_labels_on_a_registered_series_follow_its_transform(tmp_path: Path) -> None:
    shape, sp = (40, 40, 30), 2.0
    affine = np.diag([sp, sp, sp, 1.0])
    affine[:3, 3] = -(np.asarray(shape) - 1) / 2 * sp
    images = {}
    for m in ("t1ce", "flair"):
        images[m] = tmp_path / f"c_{m}.nii.gz"
        nib.save(nib.Nifti1Image(np.zeros(shape, np.float32), affine), str(images[m]))
    labels = np.zeros(shape, np.uint8)
    labels[18:24, 14:20, 12:16] = 3  # an ET block, reference (T1ce) voxels
    t = np.array([0.0, 8.0, -4.0])  # the FLAIR's head moved by t (mm) relative to the T1ce
    m = np.eye(4)
    m[:3, 3] = t
    record = SimpleNamespace(extra={"registration": {
        "flair": {"method": "rigid", "world_transform": m.tolist()},
        "t1ce": {"method": "reference"}}})  # fmt: skip
    result = Prediction(labels=labels, affine=affine)
    result.record = record  # type: ignore[assignment]
    case = Case(case_id="c", layout="brats2021", images=images)
    written = _on_series_grids(case, result, tmp_path, "c", ".nii.gz", "brats2021")
    out = {p.name: nib.load(str(p)) for p in written}
    ref_centroid = np.argwhere(labels == 3).mean(0)
    t1ce = out["c_on_t1ce.nii.gz"]
    assert np.array_equal(np.asarray(t1ce.dataobj), np.where(labels == 3, 4, 0))
    flair = out["c_on_flair.nii.gz"]
    assert np.allclose(flair.affine, affine)  # written with the series' own header
    got = np.argwhere(np.asarray(flair.dataobj) == 4).mean(0)
    # a lesion at reference world p lies in FLAIR voxel inv(A) (p + t), i.e. t / spacing away
    np.testing.assert_allclose(got - ref_centroid, t / sp, atol=0.51)
