"""``bench predict`` end to end on a tiny case, and its summary arithmetic."""

from __future__ import annotations

import pytest

from transmed.bench.predict import _ratios, markdown, run_predict_benchmark, scaling_exponent


@pytest.mark.slow
def test_predict_benchmark_runs_both_modes_and_writes_a_report(tmp_path):
    result = run_predict_benchmark(
        models=("unet",), shape=(48, 48, 32), repeats=1, variants=False, scales=(),
        workdir=tmp_path, progress=lambda _msg: None,
    )  # fmt: skip
    entry = result["models"]["unet"]
    for mode in ("whole", "sliding"):
        assert entry[mode]["status"] == "ok", entry[mode]
        lat = entry[mode]["latency"]
        assert lat["runs"] == 1 and lat["median_s"] > 0
        assert entry[mode]["peak_rss_bytes"] > 50 * 2**20
        assert set(entry[mode]["stages_median_s"]) == {
            "read", "preprocess", "infer", "restore", "write"
        }  # fmt: skip
    assert entry["whole"]["window"] is None
    text = markdown(result)
    assert "| unet |" in text and "whole volume" in text


def _entry(median: float, shape=(10, 10, 10)) -> dict:
    return {"status": "ok", "latency": {"median_s": median}, "network_shape": list(shape)}


def test_ratios_and_scaling_exponent():
    entries = {
        "segresnet": {"whole": _entry(4.0), "sliding": _entry(10.0)},
        "transmed_full": {"whole": _entry(1.0), "sliding": {"status": "error"}},
    }
    r = _ratios(entries)["transmed_full"]
    assert r["vs_segresnet_whole"] == pytest.approx(0.25)
    assert r["vs_segresnet_sliding"] is None and r["best_s"] == 1.0
    linear = {"0.5": _entry(1.0, (10, 10, 10)), "2.0": _entry(8.0, (20, 20, 20))}
    assert scaling_exponent(linear) == pytest.approx(1.0)
    assert scaling_exponent({"1": _entry(1.0)}) is None
