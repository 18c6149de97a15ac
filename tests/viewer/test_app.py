"""The viewer's server without a browser: token, path traversal, saving, SEG, outbox, memory."""

from __future__ import annotations

import gzip
import hashlib
import http.client
import json
import threading

import highdicom as hd
import nibabel as nib
import numpy as np
import pytest
from viewer_helpers import make_case, make_dicom_predict_output, make_predict_output

from transmed.io.dicom import load_study
from transmed.viewer.sources import ViewerError, catalogue
from transmed.viewer.volumes import load


def _get(server, path: str, *, token: str | None = "ok", method: str = "GET", body=None):
    """A raw request (http.client sends the path exactly as given: no ``..`` clean-up)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    value = server.token if token == "ok" else token
    headers = {} if token is None else {"X-Transmed-Token": value}
    conn.request(method, path, body=body, headers=headers)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, data


def _ras_labels(server, cid: str) -> np.ndarray:
    status, data = _get(server, f"/api/cases/{cid}/labels.nii")
    assert status == 200
    img = nib.Nifti1Image.from_bytes(data)
    return np.asarray(img.dataobj).astype(np.uint8)


def _save(server, cid: str, ras: np.ndarray, query: str = "seconds_open=12&seconds_editing=5"):
    status, data = _get(server, f"/api/cases/{cid}/save?{query}", method="POST",
                        body=np.asfortranarray(ras).tobytes(order="F"))  # fmt: skip
    return status, json.loads(data)


def _to_file_order(server, cid: str, ras: np.ndarray) -> np.ndarray:
    loaded = server.app.state.viewer.loaded(cid)
    return loaded.from_ras_bitmap(np.asfortranarray(ras).tobytes(order="F"))


@pytest.mark.parametrize(
    "path",
    ["/", "/static/viewer.js", "/static/niivue/niivue.umd.js", "/api/cases",
     "/api/cases/Case_001", "/api/cases/Case_001/image/t1.nii", "/api/cases/Case_001/labels.nii"],
)  # fmt: skip
def test_every_request_needs_the_token(tmp_path, server_factory, path) -> None:
    d, _ = make_case(tmp_path)
    server = server_factory(d)
    assert _get(server, path, token=None)[0] == 403
    assert _get(server, path, token="wrong")[0] == 403
    assert _get(server, path)[0] == 200
    assert _get(server, path + ("&" if "?" in path else "?") + f"token={server.token}",
                token=None)[0] == 200  # fmt: skip


def test_save_needs_the_token(tmp_path, server_factory) -> None:
    d, _ = make_case(tmp_path)
    server = server_factory(d)
    status, _ = _get(server, "/api/cases/Case_001/save", token=None, method="POST", body=b"x")
    assert status == 403
    assert not (d / "Case_001_corrected.nii.gz").exists()


def test_another_host_header_is_refused(tmp_path, server_factory) -> None:
    d, _ = make_case(tmp_path)
    server = server_factory(d)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    headers = {"Host": "evil.example", "X-Transmed-Token": server.token}
    conn.request("GET", "/api/cases", headers=headers)
    assert conn.getresponse().status == 400


@pytest.mark.parametrize(
    "path",
    ["/static/../sources.py", "/static/%2e%2e/sources.py", "/static/..%2fsources.py",
     "/static/%2E%2E%2F%2E%2E%2Fviewer%2Fsources.py", "/static/niivue/../../app.py",
     "/api/cases/..%2f..%2fetc%2fpasswd/labels.nii", "/api/cases/../../etc/passwd",
     "/api/cases/Case_001/image/..%2fCase_001_t1.nii", "/api/cases/Case_001/image/%2e%2e.nii",
     "/static/%252e%252e/sources.py", "/..%2f..%2f..%2fetc%2fpasswd"],
)  # fmt: skip
def test_no_path_traversal(tmp_path, server_factory, path) -> None:
    d, _ = make_case(tmp_path)
    server = server_factory(d)
    status, data = _get(server, path)
    assert status in (400, 403, 404, 422)
    assert b"def " not in data and b"root:" not in data and not data.startswith(b"\x1f\x8b")


def test_save_writes_next_to_the_prediction_in_its_label_values(tmp_path, server_factory) -> None:
    d, pred = make_case(tmp_path)
    before = hashlib.sha256((d / "Case_001.nii.gz").read_bytes()).hexdigest()
    server = server_factory(d)
    ras = _ras_labels(server, "Case_001")
    edited = ras.copy()
    edited[5:8, 6:9, 10] = 3  # enhancing painted on background
    edited[ras == 1] = 0  # all necrosis erased
    status, entry = _save(server, "Case_001", edited)
    assert status == 200, entry
    out = nib.load(d / "Case_001_corrected.nii.gz")
    ref = nib.load(d / "Case_001.nii.gz")
    assert out.shape == ref.shape and np.allclose(out.affine, ref.affine)
    got = np.asarray(out.dataobj)
    changed = _to_file_order(server, "Case_001", edited != ras)
    assert np.array_equal(got != pred, changed.astype(bool))  # exactly the edited voxels
    assert set(np.unique(got[changed.astype(bool)])) <= {0, 4}  # ET written as 4 (BraTS 2021)
    assert hashlib.sha256((d / "Case_001.nii.gz").read_bytes()).hexdigest() == before
    record = json.loads((d / "Case_001_corrected.json").read_text())
    (save,) = record["saves"]
    per = save["per_label"]
    assert per["enhancing"]["added"] == 9 and per["necrotic/non-enhancing core"]["removed"] == int(
        (pred == 1).sum()
    )
    assert save["voxels_changed"] == int(changed.sum())
    assert save["seconds_open"] == 12.0 and save["seconds_editing"] == 5.0


def test_bad_drawings_are_refused(tmp_path, server_factory) -> None:
    d, _ = make_case(tmp_path)
    server = server_factory(d)
    ras = _ras_labels(server, "Case_001")
    status, body = _save(server, "Case_001", ras[:-1])
    assert status == 422 and "voxels" in body["error"]
    bad = ras.copy()
    bad[0, 0, 0] = 9
    status, body = _save(server, "Case_001", bad)
    assert status == 422 and "label 9" in body["error"]
    assert not (d / "Case_001_corrected.nii.gz").exists()


def test_refuses_to_write_through_a_symlink_out_of_path(tmp_path, server_factory) -> None:
    d, _ = make_case(tmp_path / "view")
    victim = tmp_path / "victim.nii.gz"
    victim.write_bytes(b"precious")
    (d / "Case_001_corrected.nii.gz").symlink_to(victim)
    server = server_factory(d)
    status, body = _get(server, "/api/cases/Case_001")  # nor read through it as the correction
    assert status == 422 and b"Case_001_corrected.nii.gz resolves outside" in body
    status, body = _save(server, "Case_001", np.zeros((40, 48, 32), np.uint8))
    assert status == 422 and "outside" in body["error"]
    assert victim.read_bytes() == b"precious"


def test_refuses_to_write_over_an_input(tmp_path) -> None:
    from transmed.viewer.saving import check_target

    d, _ = make_case(tmp_path)
    case = catalogue(d).cases[0]
    with pytest.raises(ViewerError, match="over an input"):
        check_target(d / "Case_001.nii.gz", d, case.inputs())
    with pytest.raises(ViewerError, match="outside"):
        check_target(tmp_path / "Case_001_corrected.nii.gz", d, case.inputs())


def test_mismatched_label_is_reported_not_shown(tmp_path, server_factory) -> None:
    d, lab = make_case(tmp_path)
    nib.save(nib.Nifti1Image(lab[:, :-3], np.eye(4)), d / "Case_001.nii.gz")
    server = server_factory(d)
    status, data = _get(server, "/api/cases/Case_001")
    assert status == 422 and b"another grid" in data
    assert _get(server, "/api/cases/Case_001/labels.nii")[0] == 422


def test_concurrent_saves_do_not_interleave(tmp_path, server_factory) -> None:
    d, _ = make_case(tmp_path)
    server = server_factory(d)
    ras = _ras_labels(server, "Case_001")
    drawings = [np.full_like(ras, v % 4) for v in range(6)]
    results: list[int] = []

    def go(arr) -> None:
        results.append(_save(server, "Case_001", arr)[0])

    threads = [threading.Thread(target=go, args=(a,)) for a in drawings]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200] * 6
    got = np.asarray(nib.load(d / "Case_001_corrected.nii.gz").dataobj)
    assert len(np.unique(got)) == 1  # one whole drawing, never a mix of two
    record = json.loads((d / "Case_001_corrected.json").read_text())
    assert len(record["saves"]) == 6
    # the file on disk is the drawing of the last save recorded: the last complete save wins
    voxel_ml = abs(np.linalg.det(nib.load(d / "Case_001.nii.gz").affine[:3, :3])) / 1000
    wt = float((got > 0).sum()) * voxel_ml
    assert record["saves"][-1]["volumes_ml"]["WT"] == pytest.approx(wt, abs=1e-3)
    assert not list(d.glob(".*.tmp"))


def test_fifty_case_folder_keeps_two_cases_in_memory(tmp_path, server_factory) -> None:
    _, pred = make_predict_output(tmp_path, 50, shape=(12, 12, 8))
    server = server_factory(pred)
    status, data = _get(server, "/api/cases")
    listed = json.loads(data)["cases"]
    assert status == 200 and len(listed) == 50
    for case in listed:
        assert _get(server, f"/api/cases/{case['id']}")[0] == 200
        assert len(server.app.state.viewer.cached()) <= 2
    assert server.app.state.viewer.cached() == [listed[-2]["id"], listed[-1]["id"]]


def _seg_masks(path, source):
    seg = hd.seg.segread(path)
    labels = [str(s.SegmentLabel) for s in seg.SegmentSequence]
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[f.sop_instance_uid for f in source.frames],
        segment_numbers=list(range(1, len(labels) + 1)),
        assert_missing_frames_are_empty=True,
    )  # (k, j, i, S)
    return seg, {name: np.transpose(pixels[..., s] > 0, (2, 1, 0)) for s, name in enumerate(labels)}


def test_dicom_save_writes_a_corrected_seg(tmp_path, synth_dicom, server_factory) -> None:
    dc = make_dicom_predict_output(tmp_path, synth_dicom)
    server = server_factory(dc.root)
    (case,) = server.catalogue.cases
    status, info = _get(server, f"/api/cases/{case.case_id}")
    assert status == 200, info
    ras = _ras_labels(server, case.case_id)
    edited = ras.copy()
    edited[2:6, 2:6, 3] = 3
    status, entry = _save(server, case.case_id, edited)
    assert status == 200, entry
    seg_path = dc.root / entry["seg"]
    source = load_study(dc.study_dir).series["t1ce"]
    seg, masks = _seg_masks(seg_path, source)
    assert seg.SeriesDescription == "TransMed segmentation, manually corrected"
    assert {str(s.SegmentAlgorithmType) for s in seg.SegmentSequence} == {"SEMIAUTOMATIC"}
    assert str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID) == dc.series_uid
    assert str(seg.SOPInstanceUID) != dc.seg.stem
    expected = _to_file_order(server, case.case_id, edited)
    assert [m for m in masks] == ["WT", "TC", "ET"]
    assert np.array_equal(masks["ET"], expected == 3)
    assert np.array_equal(masks["WT"], expected > 0)
    nifti = nib.load(dc.root / entry["corrected"])
    assert np.array_equal(np.asarray(nifti.dataobj), expected)  # internal labels for DICOM
    assert np.allclose(nifti.affine, source.affine)


class _FakeSender:
    def __init__(self) -> None:
        self.sent: list[str] = []

    def send(self, path) -> None:
        from pydicom import dcmread

        self.sent.append(str(dcmread(path).SOPInstanceUID))

    def describe(self) -> str:
        return "fake PACS"


def test_node_study_is_sent_back_once_through_the_outbox(tmp_path, synth_dicom) -> None:
    from viewer_helpers import RunningServer

    from transmed.service.config import RetryConfig
    from transmed.service.outbox import Outbox, OutboxSender

    dc = make_dicom_predict_output(tmp_path, synth_dicom, storage=True)
    fake = _FakeSender()
    sender = OutboxSender(Outbox(dc.root), fake, RetryConfig())
    server = RunningServer(dc.root)
    server.app.state.viewer.send_outbox = sender
    try:
        (case,) = server.catalogue.cases
        assert _get(server, f"/api/cases/{case.case_id}/send", method="POST")[0] == 409  # unsaved
        status, entry = _save(server, case.case_id, _ras_labels(server, case.case_id))
        assert status == 200 and entry["seg"] == f"{case.case_id}_corrected.dcm"
        status, data = _get(server, f"/api/cases/{case.case_id}/send", method="POST")
        assert status == 200, data
        uid = entry["seg_sop_instance_uid"]
        assert json.loads(data)["queued"] == uid
        assert _get(server, f"/api/cases/{case.case_id}/send", method="POST")[0] == 409  # once
        sender.run_once()
        sender.run_once()
        assert fake.sent == [uid]
        state = json.loads((dc.root / "outbox" / f"{uid}.json").read_text())
        assert state["state"] == "delivered"
        review = dc.root / "jobs" / case.job_id / "review"
        assert (review / f"{case.case_id}_corrected.dcm").is_file()  # the reviewer's copy stays
    finally:
        server.stop()


def test_storage_seg_waits_for_the_node(tmp_path, synth_dicom, server_factory) -> None:
    from transmed.service.outbox import Outbox

    dc = make_dicom_predict_output(tmp_path, synth_dicom, storage=True)
    server = server_factory(dc.root)
    (case,) = server.catalogue.cases
    _, entry = _save(server, case.case_id, _ras_labels(server, case.case_id))
    status, data = _get(server, f"/api/cases/{case.case_id}/send", method="POST")
    assert status == 200 and json.loads(data)["sending"] is False
    pending = Outbox(dc.root).recover()  # what the node does at its next start
    assert entry["seg_sop_instance_uid"] in {i.item_id for i in pending}


def test_unknown_case_and_modality(tmp_path, server_factory) -> None:
    d, _ = make_case(tmp_path)
    server = server_factory(d)
    assert _get(server, "/api/cases/nope")[0] == 422
    assert _get(server, "/api/cases/Case_001/image/pd.nii")[0] == 404


def test_images_are_served_on_the_label_grid_in_ras_order(tmp_path, server_factory) -> None:
    d, pred = make_case(tmp_path)
    server = server_factory(d)
    _, data = _get(server, "/api/cases/Case_001/image/t1ce.nii")
    img = nib.Nifti1Image.from_bytes(data)
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
    src = nib.load(d / "Case_001_t1ce.nii.gz")
    assert np.array_equal(np.asarray(img.dataobj), np.asarray(src.dataobj)[::-1, ::-1, :])
    loaded = load(catalogue(d).cases[0])
    assert np.allclose(img.affine, loaded.ras_grid.affine)


def test_images_are_encoded_once_and_revalidated_by_etag(tmp_path, server_factory) -> None:
    d, _ = make_case(tmp_path)
    server = server_factory(d)
    path = "/api/cases/Case_001/image/t2.nii"
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("GET", path, headers={"X-Transmed-Token": server.token})
    first = conn.getresponse()
    body, etag = first.read(), first.getheader("ETag")
    assert first.status == 200 and etag and "max-age" in first.getheader("Cache-Control")
    item = server.app.state.viewer.loaded("Case_001")
    assert item._encoded["image/t2"].data is not None  # kept with the case in memory
    conn.request("GET", path, headers={"X-Transmed-Token": server.token, "If-None-Match": etag})
    again = conn.getresponse()
    assert again.status == 304 and again.read() == b""
    conn.close()
    assert _get(server, path)[1] == body  # the same bytes, not a second encoding


def test_raw_labels_are_niivues_bitmap(tmp_path, server_factory) -> None:
    d, _ = make_case(tmp_path)
    server = server_factory(d)
    status, raw = _get(server, "/api/cases/Case_001/labels.raw")
    assert status == 200
    ras = _ras_labels(server, "Case_001")
    assert raw == np.asfortranarray(ras).tobytes(order="F")  # x fastest, RAS order


def test_raw_labels_are_gzipped_for_a_browser_that_accepts_it(tmp_path, server_factory) -> None:
    d, _ = make_case(tmp_path)
    server = server_factory(d)
    path = "/api/cases/Case_001/labels.raw"
    status, raw = _get(server, path)  # http.client sends no Accept-Encoding: the bytes as they are
    assert status == 200
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    headers = {"X-Transmed-Token": server.token, "Accept-Encoding": "gzip, deflate, br, zstd"}
    conn.request("GET", path, headers=headers)
    first = conn.getresponse()
    body, etag = first.read(), first.getheader("ETag")
    assert first.status == 200 and first.getheader("Content-Encoding") == "gzip"
    assert first.getheader("Vary") == "Accept-Encoding"
    assert first.getheader("Cache-Control") == "no-cache"
    assert gzip.decompress(body) == raw and len(body) < len(raw) / 5
    conn.request("GET", path, headers={**headers, "If-None-Match": etag})
    again = conn.getresponse()
    assert again.status == 304 and again.read() == b""
    conn.request("GET", path, headers={**headers, "Accept-Encoding": "gzip;q=0, identity"})
    refused = conn.getresponse()
    assert refused.getheader("Content-Encoding") is None and refused.read() == raw
    conn.request("GET", path, headers={"Accept-Encoding": "gzip"})  # still behind the token
    assert conn.getresponse().status == 403
    conn.close()


def test_case_info_counts_the_labels_the_page_opens_with(tmp_path, server_factory) -> None:
    d, pred = make_case(tmp_path)
    server = server_factory(d)
    status, body = _get(server, "/api/cases/Case_001")
    assert status == 200
    info = json.loads(body)
    raw = np.frombuffer(_get(server, "/api/cases/Case_001/labels.raw")[1], np.uint8)
    assert info["label_voxels"] == np.bincount(raw, minlength=4).tolist()
    assert info["label_voxels"][3] == int((pred == 4).sum())  # BraTS 2021's 4 is internal 3
    voxel_ml = info["voxel_ml"]
    assert info["volumes_ml"]["WT"] == pytest.approx(int((pred > 0).sum()) * voxel_ml, abs=1e-3)


def test_accept_encoding_gzip() -> None:
    from starlette.requests import Request

    from transmed.viewer.app import accepts_gzip

    def req(value: str) -> Request:
        return Request({"type": "http", "headers": [(b"accept-encoding", value.encode())]})

    assert accepts_gzip(req("gzip, deflate, br, zstd"))
    assert accepts_gzip(req("br;q=1.0, GZIP;q=0.5"))
    assert not accepts_gzip(req("gzip;q=0")) and not accepts_gzip(req("identity"))
    assert not accepts_gzip(req("deflate, x-gzipped")) and not accepts_gzip(req("gzip;q=zero"))
    assert not accepts_gzip(Request({"type": "http", "headers": []}))


def test_float_images_are_served_as_scaled_int16_with_their_window() -> None:
    from transmed.viewer.volumes import display_nifti

    rng = np.random.default_rng(1)
    data = np.zeros((30, 20, 10), np.float32)
    data[5:25, 4:16, 2:8] = rng.normal(0.0, 1.0, (20, 12, 6))  # z-scored brain, zero outside
    img = nib.Nifti1Image.from_bytes(display_nifti(data, np.eye(4)))
    assert img.get_data_dtype() == np.int16
    step = (data.max() - data.min()) / 65534
    assert np.abs(img.get_fdata() - data).max() <= step / 2 + 1e-6
    lo, hi = float(img.header["cal_min"]), float(img.header["cal_max"])
    inside = data[data != 0]
    assert np.percentile(inside, 1) < lo < np.percentile(inside, 5)  # NiiVue's 2-98 % window
    assert np.percentile(inside, 95) < hi < np.percentile(inside, 99)


def test_the_page_names_the_case_it_opens(tmp_path, server_factory) -> None:
    from transmed.viewer.app import index_page

    make_case(tmp_path, "Case_001")
    make_case(tmp_path, "Case_002")
    named = server_factory(tmp_path, warm="Case_002")
    status, page = _get(named, "/")
    assert status == 200 and b'<meta name="transmed-case" content="Case_002">' in page
    status, page = _get(server_factory(tmp_path), "/")  # no case named: the page asks the list
    assert status == 200 and b'<meta name="transmed-case" content="">' in page
    odd = index_page('x"><script>alert(1)</script>').decode()
    assert "<script>alert" not in odd and 'content="x&quot;&gt;&lt;script&gt;' in odd


@pytest.mark.parametrize(
    ("dtype", "lo", "hi", "served"),
    [(np.uint8, 0, 255, np.uint8), (np.int16, -1000, 3000, np.int16),
     (np.int32, -20, 32000, np.int16), (np.uint16, 0, 60000, np.int16),
     (np.float64, -3.0, 5.0, np.int16)],
)  # fmt: skip
def test_images_leave_as_uint8_or_int16_with_their_values(dtype, lo, hi, served) -> None:
    """The page compiles NiiVue's orient shaders for uint8 and int16 images only."""
    from transmed.viewer.volumes import display_nifti

    rng = np.random.default_rng(2)
    data = rng.uniform(lo, hi, (12, 10, 8)).astype(dtype)
    data.flat[:2] = [lo, hi]
    img = nib.Nifti1Image.from_bytes(display_nifti(data, np.eye(4)))
    assert img.get_data_dtype() == served
    step = (float(hi) - float(lo)) / 65534 if served != dtype else 0.0  # scaled: one level
    assert np.abs(img.get_fdata() - data.astype(np.float64)).max() <= step / 2 + 1e-3 * step


def _raw(server, cid: str) -> np.ndarray:
    """The labels the page is served (NiiVue's bitmap, RAS order) as an array."""
    status, data = _get(server, f"/api/cases/{cid}/labels.raw")
    assert status == 200, data
    shape = server.app.state.viewer.loaded(cid).ras_grid.shape
    return np.frombuffer(data, np.uint8).reshape(shape, order="F")


def test_a_reopened_case_shows_the_saved_correction_and_keeps_every_edit(
    tmp_path, server_factory
) -> None:
    d, pred = make_case(tmp_path)
    server = server_factory(d)
    ras = _ras_labels(server, "Case_001")
    first = ras.copy()
    first[5:8, 6:9, 10] = 3  # session 1: enhancing painted on background
    assert _save(server, "Case_001", first)[0] == 200
    # the page reloaded on the same server, the case loaded afresh, a new `transmed view` run
    assert np.array_equal(_raw(server, "Case_001"), first)
    assert np.array_equal(_ras_labels(server, "Case_001"), first)
    fresh = type(server.app.state.viewer)(server.app.state.viewer.cat).loaded("Case_001")
    assert np.array_equal(fresh.ras(fresh.internal), first)
    again = server_factory(d)
    assert np.array_equal(_raw(again, "Case_001"), first)
    status, body = _get(again, "/api/cases/Case_001")
    info = json.loads(body)
    assert status == 200 and info["labels"]["shown"] == "correction"
    assert info["labels"]["file"] == "Case_001_corrected.nii.gz" and info["labels"]["saved_at"]
    assert info["label_voxels"] == np.bincount(first.reshape(-1), minlength=4).tolist()
    # session 2: necrosis erased; the file keeps session 1's enhancing too
    second = first.copy()
    second[first == 1] = 0
    status, entry = _save(again, "Case_001", second)
    assert status == 200, entry
    got = np.asarray(nib.load(d / "Case_001_corrected.nii.gz").dataobj)
    want = _to_file_order(again, "Case_001", second)
    assert np.array_equal(got > 0, want > 0) and np.array_equal(got == 4, want == 3)
    assert np.array_equal(got[got != pred], np.where(want == 3, 4, want)[got != pred])
    n_ncr = int((pred == 1).sum())
    assert entry["voxels_changed"] == n_ncr  # since the last save, not since the prediction
    assert entry["per_label"]["enhancing"]["added"] == 0
    assert entry["edited_from"] == "Case_001_corrected.nii.gz"
    total = entry["since_prediction"]
    assert total["voxels_changed"] == 9 + n_ncr
    assert total["per_label"]["enhancing"]["added"] == 9
    assert total["per_label"]["necrotic/non-enhancing core"]["removed"] == n_ncr
    # a third save on the same server measures from the second, without reopening
    third = second.copy()
    third[30:32, 6:8, 10] = 2
    status, entry = _save(again, "Case_001", third)
    assert status == 200 and entry["voxels_changed"] == 4
    assert entry["since_prediction"]["voxels_changed"] == 13 + n_ncr
    record = json.loads((d / "Case_001_corrected.json").read_text())
    assert [s["voxels_changed"] for s in record["saves"]] == [9, n_ncr, 4]
    assert np.array_equal(_raw(again, "Case_001"), third)


@pytest.mark.parametrize(
    ("problem", "message"),
    [("corrupt", "unreadable"), ("grid", "another grid"), ("values", "unexpected label values 3")],
)
def test_a_bad_saved_correction_is_reported_not_replaced_by_the_prediction(
    tmp_path, server_factory, problem, message
) -> None:
    d, pred = make_case(tmp_path)
    corrected = d / "Case_001_corrected.nii.gz"
    if problem == "corrupt":  # a save cut short by hand, a disk error
        nib.save(nib.Nifti1Image(pred, nib.load(d / "Case_001.nii.gz").affine), corrected)
        corrected.write_bytes(corrected.read_bytes()[:-200])
    elif problem == "grid":
        nib.save(nib.Nifti1Image(pred[:, :-2], np.eye(4)), corrected)
    else:  # 3 is no BraTS 2021 label (the prediction's 4 is)
        nib.save(nib.Nifti1Image(np.where(pred == 4, 3, pred).astype(np.uint8),
                                 nib.load(d / "Case_001.nii.gz").affine), corrected)  # fmt: skip
    before = corrected.read_bytes()
    server = server_factory(d)
    status, body = _get(server, "/api/cases/Case_001")
    error = json.loads(body)["error"]
    assert status == 422 and "saved correction Case_001_corrected.nii.gz" in error
    assert message in error and "move Case_001_corrected.nii.gz aside" in error
    assert _get(server, "/api/cases/Case_001/labels.raw")[0] == 422
    status, body = _save(server, "Case_001", np.zeros((40, 48, 32), np.uint8))
    assert status == 422 and corrected.read_bytes() == before  # nothing saved over it
    corrected.rename(d / "Case_001_corrected.broken.nii.gz")  # moved aside: the prediction opens
    status, body = _get(server_factory(d), "/api/cases/Case_001")
    assert status == 200 and json.loads(body)["labels"] == {
        "shown": "prediction", "file": "Case_001.nii.gz"
    }  # fmt: skip


def test_case_info_says_which_labels_are_shown(tmp_path, server_factory) -> None:
    d, _ = make_case(tmp_path)
    server = server_factory(d)
    info = json.loads(_get(server, "/api/cases/Case_001")[1])
    assert info["labels"] == {"shown": "prediction", "file": "Case_001.nii.gz"}
    status, entry = _save(server, "Case_001", _ras_labels(server, "Case_001"))
    assert status == 200 and entry["edited_from"] == "Case_001.nii.gz"
    info = json.loads(_get(server, "/api/cases/Case_001")[1])
    assert info["labels"] == {
        "shown": "correction", "file": "Case_001_corrected.nii.gz",
        "saved_at": entry["saved_at"], "prediction": "Case_001.nii.gz",
    }  # fmt: skip
    assert info["prediction"] == "Case_001.nii.gz"
    again = json.loads(_get(server_factory(d), "/api/cases/Case_001")[1])
    assert again["labels"] == info["labels"]  # the saved_at of the edit record


@pytest.mark.parametrize("storage", [False, True])
def test_a_reopened_dicom_study_keeps_every_edit_in_its_seg(
    tmp_path, synth_dicom, server_factory, storage
) -> None:
    dc = make_dicom_predict_output(tmp_path, synth_dicom, storage=storage)
    server = server_factory(dc.root)
    (case,) = server.catalogue.cases
    cid = case.case_id
    ras = _ras_labels(server, cid)
    first = ras.copy()
    first[2:6, 2:6, 3] = 3
    status, entry1 = _save(server, cid, first)
    assert status == 200, entry1
    again = server_factory(dc.root)  # a new `transmed view` on the same folder
    assert np.array_equal(_raw(again, cid), first)
    info = json.loads(_get(again, f"/api/cases/{cid}")[1])
    assert info["labels"]["shown"] == "correction" and info["labels"]["file"] == entry1["corrected"]
    second = first.copy()
    second[first == 2] = 0  # oedema erased
    status, entry2 = _save(again, cid, second)
    assert status == 200, entry2
    assert entry2["voxels_changed"] == int((first == 2).sum())
    assert entry2["since_prediction"]["voxels_changed"] == int((ras != second).sum())
    assert entry2["seg_sop_instance_uid"] != entry1["seg_sop_instance_uid"]
    source = load_study(dc.study_dir).series["t1ce"]
    folder = dc.root / "jobs" / case.job_id / "review" if storage else dc.root
    _, masks = _seg_masks(folder / entry2["seg"], source)
    expected = _to_file_order(again, cid, second)
    assert np.array_equal(masks["ET"], expected == 3) and np.array_equal(masks["WT"], expected > 0)
    assert masks["ET"][_to_file_order(again, cid, first == 3).astype(bool)].all()  # session 1
    if storage:  # what is sent is the last save's SEG, once
        status, data = _get(again, f"/api/cases/{cid}/send", method="POST")
        assert status == 200 and json.loads(data)["queued"] == entry2["seg_sop_instance_uid"]
        assert _get(again, f"/api/cases/{cid}/send", method="POST")[0] == 409


def _disk_full(*args, **kwargs):
    raise OSError(28, "No space left on device")


def test_a_save_failing_after_its_label_map_leaves_the_last_save_whole(
    tmp_path, synth_dicom, server_factory, monkeypatch
) -> None:
    """The SEG writer fails after the label map is written: the save is reported failed and
    the files, the record and the labels served all stay those of the save before."""
    from transmed.io.dicom import seg as seg_io

    dc = make_dicom_predict_output(tmp_path, synth_dicom)
    server = server_factory(dc.root)
    (case,) = server.catalogue.cases
    cid = case.case_id
    first = _ras_labels(server, cid)
    first[2:6, 2:6, 3] = 3
    status, entry1 = _save(server, cid, first)
    assert status == 200, entry1
    files = [dc.root / entry1["corrected"], dc.root / entry1["seg"],
             dc.root / entry1["corrected"].replace(".nii.gz", ".json")]  # fmt: skip
    before = [p.read_bytes() for p in files]
    monkeypatch.setattr(seg_io, "write_seg", _disk_full)
    second = first.copy()
    second[first == 2] = 0  # oedema erased
    status, body = _get(server, f"/api/cases/{cid}/save?seconds_open=3", method="POST",
                        body=np.asfortranarray(second).tobytes(order="F"))  # fmt: skip
    assert [p.read_bytes() == b for p, b in zip(files, before, strict=True)] == [True] * 3
    assert sorted(p.name for p in files[0].parent.iterdir() if p.name.startswith(".")) == []
    assert status == 500
    error = json.loads(body)["error"]
    assert "No space left on device" in error and "nothing was saved" in error
    assert np.array_equal(_raw(server, cid), first)  # the page reloaded shows the last save
    monkeypatch.undo()
    again = server_factory(dc.root)  # reopened: the last save with its own time
    info = json.loads(_get(again, f"/api/cases/{cid}")[1])
    assert info["labels"]["saved_at"] == entry1["saved_at"] and "recorded" not in info["labels"]
    assert np.array_equal(_raw(again, cid), first)
    status, entry2 = _save(server, cid, second)  # retried: measured from the last save
    assert status == 200 and entry2["voxels_changed"] == int((first == 2).sum())


def test_a_label_map_its_record_does_not_describe_is_reopened_as_unrecorded(
    tmp_path, server_factory, monkeypatch
) -> None:
    """The record's rename, the save's last step, fails after the label map's: the save is
    reported failed, and a reopened case does not take the record's last save for the file's."""
    import os

    d, _ = make_case(tmp_path)
    server = server_factory(d)
    first = _ras_labels(server, "Case_001")
    first[5:8, 6:9, 10] = 3
    status, entry1 = _save(server, "Case_001", first)
    assert status == 200, entry1
    replace = os.replace

    def no_record(src, dst, *args, **kwargs):
        if str(dst).endswith("_corrected.json"):
            raise PermissionError(13, "Permission denied", str(dst))
        return replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", no_record)
    second = first.copy()
    second[first == 1] = 0
    status, body = _get(server, "/api/cases/Case_001/save", method="POST",
                        body=np.asfortranarray(second).tobytes(order="F"))  # fmt: skip
    monkeypatch.undo()
    assert status == 500
    error = json.loads(body)["error"]
    assert "Permission denied" in error and "Case_001_corrected.json" in error
    assert np.array_equal(_raw(server, "Case_001"), second)  # what is on disk is what is shown
    record = json.loads((d / "Case_001_corrected.json").read_text())
    assert [s["saved_at"] for s in record["saves"]] == [entry1["saved_at"]]
    labels = json.loads(_get(server_factory(d), "/api/cases/Case_001")[1])["labels"]
    assert labels["shown"] == "correction" and labels["recorded"] is False
    status, entry3 = _save(server, "Case_001", second)  # saved again: recorded, nothing changed
    assert status == 200 and entry3["voxels_changed"] == 0
    labels = json.loads(_get(server_factory(d), "/api/cases/Case_001")[1])["labels"]
    assert labels["saved_at"] == entry3["saved_at"] and "recorded" not in labels


def test_an_unreadable_edit_record_is_refused_not_overwritten(tmp_path, server_factory) -> None:
    d, _ = make_case(tmp_path)
    record = d / "Case_001_corrected.json"
    record.write_text('{"case": "Case_001", "saves": [{"saved_at": "2026-01-01T00:00:00Z"')
    server = server_factory(d)
    status, body = _save(server, "Case_001", _ras_labels(server, "Case_001"))
    assert status == 422 and "edit record Case_001_corrected.json is unreadable" in body["error"]
    assert record.read_text().endswith('"2026-01-01T00:00:00Z"')  # its entries kept
    assert not (d / "Case_001_corrected.nii.gz").exists()
