from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from transmed.bench.complexity import (
    add_ratios,
    check_size,
    complexity_markdown,
    resolve_models,
    run_complexity,
)
from transmed.cli import app
from transmed.models import create_model


def test_cli_complexity_writes_json_and_markdown(tmp_path) -> None:
    res = CliRunner().invoke(
        app,
        [
            "bench",
            "complexity",
            "--size",
            "16",
            "16",
            "16",
            "--models",
            "transmed_a",
            "--repeats",
            "1",
            "--threads",
            "1",
            "--no-scaling",
            "--out",
            str(tmp_path),
        ],
    )
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "complexity.json").read_text())
    assert {"date", "machine", "settings", "models", "reference_model", "total_wall_s"} <= set(data)
    for key in ("cpu_model", "usable_cores", "torch_version", "torch_threads"):
        assert data["machine"][key]
    assert data["machine"]["torch_threads"] == 1
    assert data["settings"]["input_shape"] == [1, 4, 16, 16, 16]
    names = [m["name"] for m in data["models"]]
    assert names == ["transmed_a", "segresnet"]  # the reference is added
    for m in data["models"]:
        assert m["status"] == "ok", m
        assert m["params"] > 0 and m["flops"] > 0 and m["latency"]["runs"] == 1
        assert m["memory"]["peak_bytes"] >= m["memory"]["baseline_bytes"] > 0
    a, seg = data["models"]
    # an independent count of the weights, and ratios against the reference's own numbers
    assert a["params"] == sum(p.numel() for p in create_model("transmed_a").parameters())
    assert a["time_ratio"] == pytest.approx(a["latency"]["median_s"] / seg["latency"]["median_s"])
    assert a["param_ratio"] == pytest.approx(a["params"] / seg["params"])
    md = (tmp_path / "complexity.md").read_text()
    assert "time vs segresnet" in md and data["machine"]["cpu_model"] in md
    rows = {c[0]: c for c in (
        [x.strip() for x in line.strip("|").split("|")] for line in md.splitlines()
        if line.startswith("| transmed_a |") or line.startswith("| segresnet |")
    )}  # fmt: skip
    assert rows["transmed_a"][1] == f"{a['params'] / 1e6:.2f}"
    assert rows["transmed_a"][3] == f"{a['latency']['median_s']:.3f}"
    assert rows["transmed_a"][7:9] == [f"{a['time_ratio']:.2f}×", f"{a['param_ratio']:.2f}×"]
    assert rows["segresnet"][7:9] == ["1.00×", "1.00×"]
    assert not (tmp_path / "attention_scaling.json").exists()  # --no-scaling
    assert "[1/2] transmed_a" in res.output and "[2/2] segresnet" in res.output


def test_fixed_size_model_too_small_for_the_input_is_reported_not_crashed() -> None:
    res = run_complexity(["unetr"], size=(144, 16, 16), repeats=1, threads=1, reference=None)
    (entry,) = res["models"]
    assert entry["status"] == "n/a"
    assert entry["reason"] == "n/a (fixed size 128×128×128)"
    assert entry["params"] > 0 and entry["time_ratio"] is None
    assert "n/a (fixed size 128×128×128)" in complexity_markdown(res)


def test_ratios_against_the_reference() -> None:
    entries = [
        {"name": "a", "status": "ok", "params": 30, "latency": {"median_s": 1.0}},
        {"name": "segresnet", "status": "ok", "params": 10, "latency": {"median_s": 4.0}},
        {"name": "b", "status": "n/a", "params": 5},
    ]
    add_ratios(entries, "segresnet")
    assert entries[0]["time_ratio"] == 0.25 and entries[0]["param_ratio"] == 3.0
    assert entries[2]["time_ratio"] is None


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown model"):
        resolve_models("unet,not_a_model")
    with pytest.raises(ValueError, match="three values"):
        check_size((16, 16))
    with pytest.raises(ValueError, match="between 1"):
        check_size((0, 16, 16))
    res = CliRunner().invoke(app, ["bench", "complexity", "--models", "nope", "--no-scaling"])
    assert res.exit_code != 0 and "unknown model" in res.output


def test_measure_model_reports_fixed_size_in_the_child_path_too() -> None:
    from transmed.bench.complexity import measure_model

    entry = measure_model("unetr", (32, 16, 16), repeats=1, model_kwargs={"img_size": 16})
    assert entry["status"] == "n/a" and entry["reason"] == "n/a (fixed size 16×16×16)"
