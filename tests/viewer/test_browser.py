"""The viewer in a real browser: Debian's chromium, headless, driven by Playwright for Python.

Skipped without chromium, failed instead under ``.ci/run`` (``TRANSMED_REQUIRE_BROWSER=1``).
"""

from __future__ import annotations

import io
import json
import os
import time

import highdicom as hd
import matplotlib.image as mpimg
import nibabel as nib
import numpy as np
import pytest
from viewer_helpers import make_case, make_dicom_predict_output, open_viewer

from transmed.io.dicom import load_study


def _canvas(page) -> np.ndarray:
    """The canvas as an (H, W, 3) float array in [0, 1]."""
    return mpimg.imread(io.BytesIO(page.locator("#gl").screenshot()), format="png")[..., :3]


def _coloured(img: np.ndarray) -> int:
    """Overlay pixels: saturated and red/green/yellow (the MR image is grey, the crosshair
    blue)."""
    saturated = (img.max(-1) - img.min(-1)) > 0.15
    return int((saturated & (img[..., 2] < img[..., :2].max(-1))).sum())


def _bitmap(page) -> np.ndarray:
    return np.array(page.evaluate("Array.from(tm.nv.drawBitmap)"), dtype=np.uint8)


def _stroke(page, z: int, y: int, x0: int, x1: int) -> None:
    """Drag the brush from the centre of RAS voxel (x0, y, z) to that of (x1, y, z) on the
    axial slice z."""
    page.evaluate(f"tm.nv.scene.crosshairPos = tm.nv.vox2frac([{x0}, {y}, {z}]); tm.nv.drawScene()")
    pts = page.evaluate(
        f"""[[{x0}, {y}, {z}], [{x1}, {y}, {z}]].map(v => {{
            const p = tm.nv.frac2canvasPos(tm.nv.vox2frac(v));
            const r = tm.nv.canvas.getBoundingClientRect();
            return [r.left + p[0] / devicePixelRatio, r.top + p[1] / devicePixelRatio]; }})"""
    )
    (ax, ay), (bx, by) = pts
    page.mouse.move(ax, ay)
    page.mouse.down()
    page.mouse.move(bx, by, steps=12)
    page.mouse.up()


def _ras_index(shape, flat: np.ndarray) -> np.ndarray:
    """Flat indices of NiiVue's bitmap (x fastest) → (n, 3) voxel indices."""
    return np.stack(np.unravel_index(flat, shape, order="F"), axis=1)


def test_open_render_toggle_paint_undo_save(tmp_path, server_factory, browser) -> None:
    d, pred = make_case(tmp_path)
    server = server_factory(d)
    page = open_viewer(browser, server)
    assert page.evaluate("tm.state.error") is None and page.tm_errors == []
    info = page.evaluate("tm.state.info")
    shape = tuple(info["shape"])

    img = _canvas(page)  # the image renders: not blank, with the overlay in colour
    assert img.std() > 0.05 and (img.max(-1) > 0.2).mean() > 0.1
    with_overlay = _coloured(img)
    assert with_overlay > 200

    for region in ("WT", "TC", "ET"):  # per-region toggles hide the overlay
        page.locator(f'input[data-region="{region}"]').uncheck()
    assert _coloured(_canvas(page)) < with_overlay / 20
    page.locator('input[data-region="ET"]').check()
    only_et = _coloured(_canvas(page))
    assert 0 < only_et < with_overlay
    for region in ("WT", "TC"):
        page.locator(f'input[data-region="{region}"]').check()

    before = _bitmap(page)
    page.locator("#penLabel").select_option("3")
    page.locator('#tools button[data-tool="brush"]').click()
    z, y = 3, 4  # a slice and a row outside the tumour: every painted voxel is new
    _stroke(page, z, y, 8, 30)
    after = _bitmap(page)
    painted = _ras_index(shape, np.flatnonzero(after != before))
    assert len(painted) >= 20
    assert set(painted[:, 2]) == {z} and set(painted[:, 1]) == {y}  # on the stroke's row
    xs = np.sort(painted[:, 0])  # one contiguous run from the first voxel to (about) the last
    assert xs[0] == 8 and xs[-1] in (29, 30) and np.array_equal(xs, np.arange(8, xs[-1] + 1))
    assert set(after[after != before]) == {3}

    page.locator("#undo").click()
    assert np.array_equal(_bitmap(page), before)
    page.locator("#redo").click()
    assert np.array_equal(_bitmap(page), after)

    page.locator("#save").click()
    page.wait_for_function("tm.state.lastSave || tm.state.error", timeout=30_000)
    saved = nib.load(d / "Case_001_corrected.nii.gz")
    ref = nib.load(d / "Case_001.nii.gz")
    assert saved.shape == ref.shape and np.allclose(saved.affine, ref.affine)
    got = np.asarray(saved.dataobj)
    # file voxel order: the tiny case is stored with x and y flipped relative to RAS
    expected = np.zeros(shape, bool)
    expected[tuple(painted.T)] = True
    expected = expected[::-1, ::-1, :]
    assert np.array_equal(got != pred, expected)  # exactly the painted voxels
    assert set(np.unique(got[expected])) == {4}  # ET in the input's BraTS 2021 value
    record = json.loads((d / "Case_001_corrected.json").read_text())["saves"][-1]
    assert record["per_label"]["enhancing"]["added"] == len(painted)
    assert record["seconds_open"] > 0 and record["seconds_editing"] > 0
    # a second save with no edit since: its times count from the first save, not from opening
    page.evaluate("tm.state.lastSave = null")
    page.locator("#save").click()
    page.wait_for_function("tm.state.lastSave || tm.state.error", timeout=30_000)
    saves = json.loads((d / "Case_001_corrected.json").read_text())["saves"]
    assert len(saves) == 2 and saves[1]["voxels_changed"] == 0
    assert saves[1]["seconds_editing"] == 0


def test_a_reloaded_page_shows_the_saved_correction_and_saves_on_top(
    tmp_path, server_factory, browser
) -> None:
    d, pred = make_case(tmp_path)
    server = server_factory(d)
    page = open_viewer(browser, server)
    shape = tuple(page.evaluate("tm.state.info.shape"))
    assert page.evaluate("tm.state.info.labels.shown") == "prediction"
    before = _bitmap(page)
    page.locator("#penLabel").select_option("3")
    page.locator('#tools button[data-tool="brush"]').click()
    _stroke(page, 3, 4, 8, 30)  # session 1: a row of enhancing outside the tumour
    first = _bitmap(page)
    page.locator("#save").click()
    page.wait_for_function("tm.state.lastSave || tm.state.error", timeout=30_000)
    page.close()

    page = open_viewer(browser, server)  # reloaded: the saved correction, not the prediction
    assert page.evaluate("tm.state.error") is None and page.tm_errors == []
    assert np.array_equal(_bitmap(page), first)
    status = page.locator("#status").inner_text()
    assert "showing the saved correction Case_001_corrected.nii.gz (saved at 20" in status
    assert '"shown": "showing the saved correction' in page.locator("#provenance").inner_text()
    page.locator("#penLabel").select_option("2")
    page.locator('#tools button[data-tool="brush"]').click()
    _stroke(page, 5, 4, 8, 30)  # session 2: oedema on another slice
    second = _bitmap(page)
    added = int((second != first).sum())
    assert added >= 20
    page.locator("#save").click()
    page.wait_for_function("tm.state.lastSave || tm.state.error", timeout=30_000)
    entry = page.evaluate("tm.state.lastSave")
    assert entry["voxels_changed"] == added  # since session 1's save
    assert entry["since_prediction"]["voxels_changed"] == int((second != before).sum())
    assert f"{added} voxels changed" in page.locator("#status").inner_text()
    got = np.asarray(nib.load(d / "Case_001_corrected.nii.gz").dataobj)
    want = second.reshape(shape, order="F")[::-1, ::-1, :]  # file order: x and y flipped
    assert np.array_equal(got, np.where(want == 3, 4, want))  # both sessions' strokes


def test_modalities_views_and_volumes(tmp_path, server_factory, browser) -> None:
    d, pred = make_case(tmp_path)
    server = server_factory(d)
    page = open_viewer(browser, server)
    assert page.evaluate("Array.from(tm.nv.drawBitmap).length") > 0
    drawing = _bitmap(page)
    first = _canvas(page)
    page.wait_for_load_state("networkidle")  # the other modalities, fetched after the first frame
    prefetched = sorted(page.evaluate("Object.keys(tm.state.prefetched)"))
    assert prefetched == ["flair", "t1", "t1ce", "t2"]
    # a modality switch draws the scene once, however many NiiVue steps ask for a redraw
    page.evaluate("tm.draws = 0; const core = tm.nv.drawSceneCore.bind(tm.nv);"
                  "tm.nv.drawSceneCore = () => { tm.draws++; return core(); }; 0")  # fmt: skip
    page.locator("#modality").select_option("flair")
    page.wait_for_function("tm.state.modality === 'flair'")
    page.wait_for_timeout(300)  # a redraw the switch would still queue lands in here
    assert page.evaluate("tm.draws") == 1
    assert page.evaluate("tm.nv.volumes[0].name").startswith("flair")
    assert np.array_equal(_bitmap(page), drawing)  # the drawing survives the switch
    assert np.abs(_canvas(page) - first).mean() > 0.005  # another image is shown
    for mod in ("t1", "t2", "t1ce"):  # every modality can be shown
        page.locator("#modality").select_option(mod)
        page.wait_for_function(f"tm.state.modality === '{mod}'")
        assert page.evaluate("tm.nv.volumes[0].name").startswith(mod)
    assert page.evaluate("tm.state.error") is None
    # NiiVue's gradient passes are skipped (the open time's main cost on a software WebGL);
    # false here means NiiVue renamed what viewer.js swaps, and opening is slow again.
    assert page.evaluate("tm.state.gradientSkipped") is True
    assert page.evaluate("tm.state.zeroUploadsSkipped") is True
    # The shaders compiled as stubs are exactly the unused ones (an empty list: NiiVue's
    # sources changed, and its start-up compiles every shader again).
    stubbed = page.evaluate("tm.state.stubbedShaders")
    assert len(stubbed) == 30 and {"renderGradientShader", "orientShaderF", "mesh:Phong"} <= set(
        stubbed
    )
    in_use = page.evaluate("['renderShader', 'sliceMMShader', 'surfaceShader', 'orientShaderI',"
                           " 'orientShaderU'].filter((k) => tm.state.stubbedShaders.includes(k)"
                           " || Object.entries(tm.nv).some(([n, v]) => v === tm.nv[k]"
                           " && tm.state.stubbedShaders.includes(n)))")  # fmt: skip
    assert in_use == []
    # NiiVue's gradient pass is skipped call by call, and the background's orient pass runs
    # the plain shaders (test_plain_orient_pass_is_niivues compares them with NiiVue's own)
    assert page.evaluate("tm.state.gradientCallsElided") >= 4
    assert page.evaluate("tm.state.plainOrient") == ["orientShaderI", "orientShaderU"]
    page.locator('#views button[data-view="4"]').click()  # 3D render
    assert page.evaluate("tm.nv.opts.sliceType") == 4
    assert _canvas(page).std() > 0.02
    page.locator('#views button[data-view="1"]').click()
    assert page.evaluate("tm.nv.opts.sliceType") == 1
    voxel_ml = 1.0 * 1.2 * 1.5 / 1000
    assert page.evaluate("tm.state.volumes.ET") == pytest.approx((pred == 4).sum() * voxel_ml)
    assert page.evaluate("tm.state.volumes.WT") == pytest.approx((pred > 0).sum() * voxel_ml)
    assert "ml" in page.locator("#volumes").inner_text()


_VOLUME_TEXTURE = """(() => {
  const nv = tm.nv, gl = nv.gl, d = nv.back.dims, fb = gl.createFramebuffer();
  const out = new Uint8Array(d[1] * d[2] * d[3] * 4), layer = new Uint8Array(d[1] * d[2] * 4);
  gl.bindFramebuffer(gl.FRAMEBUFFER, fb);
  for (let z = 0; z < d[3]; z++) {
    gl.framebufferTextureLayer(gl.FRAMEBUFFER, gl.COLOR_ATTACHMENT0, nv.volumeTexture, 0, z);
    gl.readPixels(0, 0, d[1], d[2], gl.RGBA, gl.UNSIGNED_BYTE, layer);
    out.set(layer, z * layer.length);
  }
  gl.bindFramebuffer(gl.FRAMEBUFFER, null);
  gl.deleteFramebuffer(fb);
  return Array.from(out);
})()"""
#: The sources of one of NiiVue's shader objects as the page compiled them.
_SOURCES = (
    "(() => { const gl = tm.nv.gl; return gl.getAttachedShaders(tm.nv.%s.program)"
    ".map((s) => gl.getShaderSource(s)).join(''); })()"
)


@pytest.mark.parametrize("dtype", [np.int16, np.uint8])
def test_plain_orient_pass_is_niivues(tmp_path, server_factory, browser, dtype) -> None:
    """On a software WebGL the background's orient pass (image -> NiiVue's RGBA volume
    texture) runs viewer.js's plain shader: the texture is the one NiiVue's own shader makes,
    byte for byte, for the image's window and another, and a volume outside the plain case
    (here NiiVue's alpha threshold) gets NiiVue's own shader."""
    d, _ = make_case(tmp_path, dtype=dtype)
    page = open_viewer(browser, server_factory(d))
    name = {np.int16: "orientShaderI", np.uint8: "orientShaderU"}[dtype]
    assert page.evaluate("tm.state.plainOrient") == ["orientShaderI", "orientShaderU"]
    niivues = "modulation == 1"  # in NiiVue's orient shader, not in the plain one
    assert niivues not in page.evaluate(_SOURCES % name)
    textures = {}
    windows = {"image": None, "narrow": (40, 150), "wide": (40, 1000)}  # wide: dark voxels lifted
    for window, limits in windows.items():
        for general in (False, True):
            window_js = (
                f"tm.nv.volumes[0].cal_min = {limits[0]}; tm.nv.volumes[0].cal_max = {limits[1]};"
                if limits else ""
            )  # fmt: skip
            page.evaluate(f"tm.state.generalOrient = {'true' if general else 'false'};"
                          f"{window_js} tm.nv.updateGLVolume(); 0")  # fmt: skip
            assert (niivues in page.evaluate(_SOURCES % name)) is general
            textures[window, general] = np.array(page.evaluate(_VOLUME_TEXTURE), np.uint8)
    for window in windows:
        plain, niivue = textures[window, False], textures[window, True]
        assert plain.std() > 10 and np.array_equal(plain, niivue), window
    assert not np.array_equal(textures["image", False], textures["narrow", False])
    page.evaluate("tm.state.generalOrient = false; tm.nv.volumes[0].colormapType = 1;"
                  " tm.nv.updateGLVolume(); 0")  # fmt: skip
    assert niivues in page.evaluate(_SOURCES % name)
    assert page.evaluate("tm.state.error") is None and page.tm_errors == []


#: The fields NiiVue's calMinMax sets, after viewer.js's version and after NiiVue's own.
_CAL_MIN_MAX = """(() => {
  const v = tm.nv.volumes[0], keys = ["cal_min", "cal_max", "robust_min", "robust_max",
    "global_min", "global_max"];
  const runs = tm.state.fastCalMinMaxRuns;
  const fast = [v.calMinMax(), keys.map((k) => v[k])];
  const fastRan = tm.state.fastCalMinMaxRuns === runs + 1;
  const own = [tm.state.niivueCalMinMax.call(v), keys.map((k) => v[k])];
  return { fast, own, fastRan };
})()"""


@pytest.mark.parametrize("dtype", [np.int16, np.uint8])
def test_fast_cal_min_max_is_niivues(tmp_path, server_factory, browser, dtype) -> None:
    """viewer.js's calMinMax (the central box only, for a trusted header window) sets and
    returns what NiiVue's own does, with zeros counted or ignored, on an odd-sized grid."""
    d, _ = make_case(tmp_path, dtype=dtype, shape=(41, 47, 33))
    page = open_viewer(browser, server_factory(d))
    assert page.evaluate("tm.state.fastCalMinMax") is True
    assert page.evaluate("tm.state.fastCalMinMaxRuns") >= 1  # the image opened through it
    for ignore_zeros in ("false", "true"):
        page.evaluate(f"tm.nv.volumes[0].ignoreZeroVoxels = {ignore_zeros}; 0")
        got = page.evaluate(_CAL_MIN_MAX)
        assert got["fastRan"] and got["fast"] == got["own"], (ignore_zeros, got)
        assert got["fast"][1][4] < got["fast"][1][5]  # a range, not a constant
    page.evaluate("tm.nv.volumes[0].hdr.cal_max = tm.nv.volumes[0].hdr.cal_min; 0")
    got = page.evaluate(_CAL_MIN_MAX)  # no trusted window: NiiVue's own, untouched
    assert not got["fastRan"] and got["fast"] == got["own"]
    assert page.evaluate("tm.state.error") is None and page.tm_errors == []


def test_opens_the_case_the_server_names_unless_the_url_does(
    tmp_path, server_factory, browser
) -> None:
    for cid in ("Case_001", "Case_002"):
        make_case(tmp_path, cid)
    server = server_factory(tmp_path, warm="Case_002")  # named in the page, fetched at once
    page = open_viewer(browser, server)
    assert page.evaluate("tm.state.caseId") == "Case_002"
    assert page.evaluate("tm.state.error") is None
    # its info was requested before NiiVue attached (an order, not a time: no timed assertion)
    requested = page.evaluate(
        "performance.getEntriesByType('resource').filter((e) =>"
        " new URL(e.name).pathname.endsWith('/api/cases/Case_002')).map((e) => e.startTime)"
    )  # fmt: skip
    assert len(requested) == 1
    assert requested[0] < page.evaluate("tm.state.bootMarks.attached")
    page = open_viewer(browser, server, case="Case_001")
    assert page.evaluate("tm.state.caseId") == "Case_001" and page.evaluate("tm.state.ready")
    assert page.locator("#cases li.on").inner_text() == "Case_001"


def test_mismatched_label_is_reported_in_the_page(tmp_path, server_factory, browser) -> None:
    d, lab = make_case(tmp_path)
    nib.save(nib.Nifti1Image(lab[:-4], np.eye(4)), d / "Case_001.nii.gz")
    page = open_viewer(browser, server_factory(d))
    banner = page.locator("#error")
    assert banner.is_visible() and "another grid" in banner.inner_text()
    assert page.evaluate("tm.state.ready") is False


def test_dicom_correction_gives_a_seg(tmp_path, synth_dicom, server_factory, browser) -> None:
    dc = make_dicom_predict_output(tmp_path, synth_dicom)
    server = server_factory(dc.root)
    page = open_viewer(browser, server)
    assert page.evaluate("tm.state.error") is None
    shape = tuple(page.evaluate("tm.state.info.shape"))
    before = _bitmap(page)
    page.locator("#penLabel").select_option("1")
    page.locator('#tools button[data-tool="brush"]').click()
    z = int(np.argmax(np.bincount(_ras_index(shape, np.flatnonzero(before == 0))[:, 2])))
    _stroke(page, z, 1, 2, 20)
    painted = _ras_index(shape, np.flatnonzero(_bitmap(page) != before))
    assert len(painted) > 5
    page.locator("#save").click()
    page.wait_for_function("tm.state.lastSave || tm.state.error", timeout=30_000)
    entry = page.evaluate("tm.state.lastSave")
    seg = hd.seg.segread(dc.root / entry["seg"])
    assert [str(s.SegmentLabel) for s in seg.SegmentSequence] == ["WT", "TC", "ET"]
    assert {str(s.SegmentAlgorithmType) for s in seg.SegmentSequence} == {"SEMIAUTOMATIC"}
    assert "manually corrected" in seg.SeriesDescription
    source = load_study(dc.study_dir).series["t1ce"]
    assert str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID) == source.series_uid
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[f.sop_instance_uid for f in source.frames],
        segment_numbers=[1, 2, 3], assert_missing_frames_are_empty=True,
    )  # fmt: skip
    tc = np.transpose(pixels[..., 1] > 0, (2, 1, 0))
    loaded = server.app.state.viewer.loaded(page.evaluate("tm.state.caseId"))
    mask = np.zeros(shape, np.uint8)
    mask[tuple(painted.T)] = 1
    painted_file = loaded.from_ras_bitmap(np.asfortranarray(mask).tobytes(order="F")) > 0
    assert tc[painted_file].all()  # the painted necrosis is in the tumour core
    assert np.array_equal(tc & ~painted_file, np.isin(dc.label, (1, 3)) & ~painted_file)


@pytest.mark.slow
def test_page_open_time_of_a_brats_sized_case(tmp_path, server_factory, browser, capsys) -> None:
    """240 × 240 × 155, four modalities: the open time is measured and printed, not asserted."""
    d, _ = make_case(tmp_path, "Big", (240, 240, 155), affine=np.diag([-1.0, -1, 1, 1]))
    server = server_factory(d, warm="Big")  # as `transmed view` serves the case it opens
    t0 = time.perf_counter()
    page = open_viewer(browser, server, size=(1200, 900))
    page.evaluate(  # WebGL is asynchronous: read a pixel back so the queued work is done
        "(() => { const gl = tm.nv.gl;"
        " gl.readPixels(0, 0, 1, 1, gl.RGBA, gl.UNSIGNED_BYTE, new Uint8Array(4)); })()"
    )
    wall = time.perf_counter() - t0
    in_page = page.evaluate("tm.state.openMs") / 1000
    marks = page.evaluate("tm.state.openMarks")
    switches = {}
    for mod in ("t1", "t2", "flair"):
        t1 = time.perf_counter()
        page.locator("#modality").select_option(mod)
        page.wait_for_function(f"tm.state.modality === '{mod}'", timeout=60_000)
        switches[mod] = round(time.perf_counter() - t1, 2)
    assert page.evaluate("tm.state.error") is None and _canvas(page).std() > 0.02
    with capsys.disabled():
        print(f"\n[viewer] 240x240x155 open: {wall:.2f} s from navigation, {in_page:.2f} s "
              f"case open in page (T1ce + labels; ms: {marks}); other modalities: {switches}; "
              f"1-min load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")  # fmt: skip
