"""``transmed predict``: cases in, label maps on their own grids out (or DICOM SEG)."""

from __future__ import annotations

from pathlib import Path

import typer

_MODES = ("auto", "whole", "sliding")


def _device(name: str) -> str:
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _precision(name: str, device: str) -> str:
    """``auto``: fp32 on CPU (bf16 measured slower on CPUs without native bf16; see
    benchmarks/results/predict.md), bf16 on CUDA devices that support it, else fp16."""
    if name != "auto":
        return name
    if device.startswith("cuda"):
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def predict_cmd(
    model: str = typer.Option(
        None, "--model", "-m",
        help="Checkpoint, run folder, cross-validation folder (ensemble), or a shipped model's "
        "name (`transmed models --pretrained`); default: the shipped generalist model.",
    ),  # fmt: skip
    input: Path = typer.Option(
        None,
        "--input",
        "-i",
        help="A case folder (BraTS 2021/2023), a dataset folder or imagesTs (batch), or a DICOM "
        "study folder.",
    ),  # fmt: skip
    output: Path = typer.Option(
        ..., "--output", "-o", help="Output folder (or, for one case, a .nii.gz file)."
    ),
    t1: Path = typer.Option(None, "--t1", help="T1 NIfTI (instead of --input)."),
    t1ce: Path = typer.Option(None, "--t1ce", help="T1 post-contrast NIfTI."),
    t2: Path = typer.Option(None, "--t2", help="T2 NIfTI."),
    flair: Path = typer.Option(None, "--flair", help="FLAIR NIfTI."),
    case_id: str = typer.Option(None, "--case-id", help="Output name for --t1/... input."),
    layout: str = typer.Option(
        "auto",
        "--layout",
        help="Input layout (auto, brats2021, brats2023, msd, nnunet); for "
        "--t1/... input it picks the output label values [brats2021].",
    ),  # fmt: skip
    probabilities: bool = typer.Option(
        False, "--probabilities", help="Also write WT/TC/ET probability maps."
    ),
    mode: str = typer.Option(
        "auto", "--mode",
        help="auto (the mode the checkpoint records: sliding window with the training patch "
        "unless it says whole), sliding, whole. Never chosen from free memory.",
    ),  # fmt: skip
    memory_budget: str = typer.Option(
        "auto", "--memory-budget",
        help="With --mode whole: refuse a case whose estimated memory exceeds this, e.g. 6G "
        "[auto: no check].",
    ),  # fmt: skip
    overlap: float = typer.Option(0.5, "--overlap", min=0.0, max=0.95, help="Sliding overlap."),
    tta: bool = typer.Option(
        None, "--tta/--no-tta",
        help="Mirroring test-time augmentation (see --tta-axes) [the model's recommendation, "
        "else off].",
    ),  # fmt: skip
    tta_axes: str = typer.Option(
        None, "--tta-axes",
        help="Which mirrorings --tta averages: all (8 passes, every axis) or lr (2 passes, "
        "left-right only) [the model's recommendation, else all]; implies --tta.",
    ),  # fmt: skip
    min_component: float = typer.Option(
        None, "--min-component-mm3", min=0.0,
        help="Drop tumour specks below this (0 = off) [the model's recommendation, else 20].",
    ),  # fmt: skip
    et_min: float = typer.Option(
        None, "--et-min-mm3", min=0.0,
        help="ET → necrosis when all ET is below this (0 = off) [the model's, else 0].",
    ),  # fmt: skip
    coreless_wt: str = typer.Option(
        None, "--coreless-wt",
        help="keep or drop tumour components with no core within --core-margin-mm, in a case "
        "that has a core elsewhere [the model's recommendation, else keep].",
    ),  # fmt: skip
    core_margin: float = typer.Option(
        None, "--core-margin-mm", min=0.0,
        help="With --coreless-wt drop: how far oedema may lie from its core [the model's, else 0].",
    ),  # fmt: skip
    et_min_mean_prob: float = typer.Option(
        None, "--et-min-mean-prob", min=0.0, max=0.999,
        help="ET components whose mean ET probability is below this become necrosis "
        "(0 = off) [the model's, else 0].",
    ),  # fmt: skip
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1 ..."),
    precision: str = typer.Option("auto", "--precision", help="auto, fp32, bf16, fp16."),
    threads: int = typer.Option(0, "--threads", min=0, help="CPU threads (0 = PyTorch default)."),
    checkpoint: str = typer.Option(
        "final", "--checkpoint", help="Which checkpoint of a run: final, best, latest."
    ),
    nifti: bool = typer.Option(
        False, "--nifti", help="DICOM input: also write the label map as NIfTI."
    ),
    modality_rules: Path = typer.Option(
        None, "--modality-rules", help="DICOM input: YAML rules mapping series to modalities."
    ),
    segments: str = typer.Option(
        "regions", "--segments", help="DICOM SEG segments: regions (WT/TC/ET) or labels."
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Allow outputs to replace input files or reference labels."
    ),
    brain_extraction: str = typer.Option(
        "checkpoint", "--brain-extraction",
        help="auto (deepbet unless the input is skull-stripped), on, off [the model's own].",
    ),  # fmt: skip
    coregistration: str = typer.Option(
        "checkpoint", "--coregistration",
        help="auto (register a series when the evidence says so), header, rigid [the model's].",
    ),  # fmt: skip
    bias_correction: str = typer.Option(
        "checkpoint", "--bias-correction",
        help="n4 (N4 bias-field correction of each series in the brain mask) or off [the model's].",
    ),  # fmt: skip
    force: bool = typer.Option(
        False, "--force", help="Predict despite an implausible brain mask (marked in provenance)."
    ),
    all_grids: bool = typer.Option(
        False, "--all-grids", help="Also write the label map on every input series' own grid."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
) -> None:
    """Predict one case or a folder of cases; outputs land on each input's own grid.

    Label maps use the input layout's own label values (BraTS 2021: ET = 4, ...). A DICOM folder
    gives one DICOM SEG per study, referencing its T1ce series (``--segments``). In batch mode
    a failed case does not stop the others; failures are listed at the end, the exit code is 1,
    and OUTPUT/predict_summary.json records every case.
    """
    from transmed.cli_errors import user_errors

    with user_errors():
        _predict(**locals())


def _mirror(tta: object, axes: object) -> bool | tuple[int, ...] | None:
    """``--tta``/``--tta-axes`` as a Predictor ``mirror`` (None: the checkpoint's choice)."""
    named = {"all": True, "lr": (0,)}  # the working grid is RAS: axis 0 is left-right
    if axes is not None and axes not in named:
        raise typer.BadParameter(f"--tta-axes: expected all or lr, got {axes!r}")
    if tta is False:
        if axes is not None:
            raise typer.BadParameter("--tta-axes goes with --tta, not --no-tta")
        return False
    if axes is not None:
        return named[str(axes)]
    return None  # --tta alone or nothing: the checkpoint's axes (then, for --tta: all)


def _predict(**opts: object) -> None:
    import time

    import torch

    from transmed.inference.batch import BatchWriter, CaseResult, predict_batch, summary
    from transmed.inference.inputs import resolve_inputs
    from transmed.inference.memory import parse_budget
    from transmed.inference.outputs import check_predict_output
    from transmed.inference.postprocess import PostprocessConfig
    from transmed.inference.predictor import Predictor
    from transmed.transforms.store import write_json

    if opts["mode"] not in _MODES:
        raise ValueError(f"--mode {opts['mode']!r}: expected one of {_MODES}")
    if opts["segments"] not in ("regions", "labels"):
        raise ValueError(f"--segments {opts['segments']!r}: expected regions or labels")
    files = {m: opts[m] for m in ("t1", "t1ce", "t2", "flair") if opts[m] is not None}
    inputs = resolve_inputs(
        opts["input"], files or None, layout=opts["layout"], case_id=opts["case_id"]
    )
    check_predict_output(
        inputs, opts["input"], Path(opts["output"]),  # type: ignore[arg-type]
        probabilities=bool(opts["probabilities"]), overwrite=bool(opts["overwrite"]),
    )  # fmt: skip  (before the model loads: a refused output costs no load time)
    if opts["threads"]:
        torch.set_num_threads(int(opts["threads"]))
    device = _device(str(opts["device"]))
    t0 = time.perf_counter()
    from transmed.models.pretrained import resolve_model

    opts["model"] = resolve_model(opts["model"])  # None -> the shipped model, hash checked
    predictor = Predictor.from_path(
        opts["model"], device=device, prefer=str(opts["checkpoint"]),
        mode=opts["mode"], memory_budget=parse_budget(str(opts["memory_budget"])),
        overlap=float(opts["overlap"]), mirror=_mirror(opts["tta"], opts["tta_axes"]),
        precision=_precision(str(opts["precision"]), device),
    )  # fmt: skip
    if opts["tta"] and not predictor.mirror:  # --tta on a model that recommends none: all axes
        predictor.mirror = True
    # the options given, else the checkpoint's recommendation, else PostprocessConfig's defaults
    base = predictor.postprocess or PostprocessConfig()
    coreless = opts["coreless_wt"]
    if coreless is not None and coreless not in ("keep", "drop"):
        raise typer.BadParameter(f"--coreless-wt: expected keep or drop, got {coreless!r}")
    given = {field: float(opts[opt]) for opt, field in (
        ("min_component", "min_component_mm3"), ("et_min", "et_min_mm3"),
        ("core_margin", "core_margin_mm"), ("et_min_mean_prob", "et_min_mean_prob"),
    ) if opts[opt] is not None}  # fmt: skip
    if coreless is not None:
        given["drop_coreless_wt"] = coreless == "drop"
    # only the options given replace the recommendation: a field no option names is kept
    import dataclasses

    predictor.postprocess = dataclasses.replace(base, **given)
    load_s = time.perf_counter() - t0
    _clinical_options(predictor, opts)
    output = Path(opts["output"])
    quiet = bool(opts["quiet"])
    say = (lambda _msg: None) if quiet else (lambda msg: typer.echo(msg, err=True))
    say(f"loaded {len(predictor.models)} model(s) in {load_s:.2f} s on {device}")

    if inputs.kind == "dicom":
        _predict_dicom(predictor, inputs.dicom_folder, output, opts, say)
        return

    single_file = output.name.endswith((".nii.gz", ".nii"))
    if single_file and len(inputs.cases) != 1:
        raise ValueError(f"{output}: a file name is only allowed for one case; give a folder")
    writer = BatchWriter(
        out_dir=output.parent if single_file else output, layout=inputs.layout,
        output_file=output if single_file else None, probabilities=bool(opts["probabilities"]),
        provenance=_provenance_fn(predictor), all_grids=bool(opts["all_grids"]),
    )  # fmt: skip

    def report(res: CaseResult) -> None:
        if res.ok:
            took = sum(v for k, v in res.seconds.items() if k != "write_wait")
            how = "whole volume" if res.window is None else f"window {res.window}"
            say(f"{res.case_id}: {took:.2f} s ({how}) -> {res.outputs[0]}")
        else:
            say(f"{res.case_id}: FAILED: {res.error}")

    results = predict_batch(predictor, inputs.cases, writer, on_result=report)
    info = summary(results, model=str(opts["model"]), device=device, load_s=load_s,
                   precision=predictor.precision, mode=predictor.mode,
                   input=str(Path(opts["input"]).resolve()) if opts["input"] else None,
                   layout=inputs.layout)  # fmt: skip  (input, layout: for transmed view)
    if not single_file:
        write_json(info, writer.out_dir / "predict_summary.json")
    failed = info["failures"]
    if failed:
        typer.secho(
            f"{len(failed)} of {len(results)} case(s) failed:", err=True, fg=typer.colors.RED
        )
        for case_id, error in failed.items():
            typer.secho(f"  {case_id}: {error}", err=True, fg=typer.colors.RED)
        raise typer.Exit(1)
    say(f"{len(results)} case(s) predicted into {writer.out_dir}")


def _predict_dicom(predictor, folder, output: Path, opts: dict, say) -> None:  # type: ignore[no-untyped-def]
    """Every MR study in a DICOM folder → one DICOM SEG each (failures reported per study)."""
    from transmed.inference.dicom import case_key, predict_dicom_study, required_modalities
    from transmed.io.dicom import DicomError, ModalityRules, load_study, scan_folder
    from transmed.transforms.store import write_json

    if output.suffix:
        raise ValueError(f"{output}: DICOM input needs an output folder")
    rules = ModalityRules.from_yaml(opts["modality_rules"]) if opts["modality_rules"] else None
    studies = sorted(scan_folder(folder).study_uids)
    if not studies:
        raise ValueError(f"{folder}: no MR DICOM instances found")
    results, failures = [], {}
    for uid in studies:
        key = case_key(uid)  # study keys, never patient identifiers, on screen and in logs
        try:
            study = load_study(folder, study_uid=uid, rules=rules,
                               modalities=required_modalities(predictor))  # fmt: skip
            res = predict_dicom_study(
                predictor, study, output, segments=str(opts["segments"]),
                write_nifti=bool(opts["nifti"]),
            )  # fmt: skip
        except (DicomError, ValueError, OSError, RuntimeError) as exc:
            failures[key] = str(exc)
            say(f"{key}: FAILED: {exc}")
            continue
        results.append({"study": key, "seg": str(res.seg_path), "seconds": res.timings,
                        "nifti": str(res.nifti_path) if res.nifti_path else None,
                        "provenance": str(res.provenance_path), "registered": res.registered,
                        "mode": res.mode,
                        "warnings": res.warnings})  # fmt: skip
        say(f"{key}: {sum(res.timings.values()):.2f} s -> {res.seg_path}")
        for m in res.other_frame_of_reference:
            say(f"{key}: {m} has another FrameOfReferenceUID than the reference series: "
                "registered rigidly (see the provenance)")  # fmt: skip
        for warning in res.warnings:
            say(f"{key}: warning: {warning}")
        typer.echo(str(res.seg_path))
    write_json({"studies": len(studies), "succeeded": len(results), "failed": len(failures),
                "failures": failures, "results": results, "input": str(Path(folder).resolve())},
               output / "predict_summary.json")  # fmt: skip
    if failures:
        typer.secho(f"{len(failures)} of {len(studies)} stud(ies) failed", err=True,
                    fg=typer.colors.RED)  # fmt: skip
        raise typer.Exit(1)


def _clinical_options(predictor, opts: dict) -> None:  # type: ignore[no-untyped-def]
    """``--brain-extraction``, ``--coregistration``, ``--bias-correction`` (``checkpoint``: keep
    the model's own) and ``--force`` onto the predictor's preprocessing."""
    import dataclasses

    from transmed.transforms.preprocess import (
        BIAS_CORRECTION_CHOICES,
        BRAIN_EXTRACTION_CHOICES,
        COREGISTRATION_CHOICES,
    )

    change = {}
    for key, flag, choices in (("brain_extraction", "--brain-extraction", BRAIN_EXTRACTION_CHOICES),
                               ("coregistration", "--coregistration", COREGISTRATION_CHOICES),
                               ("bias_correction", "--bias-correction", BIAS_CORRECTION_CHOICES)):
        value = str(opts.get(key) or "checkpoint")
        if value not in (*choices, "checkpoint"):
            raise ValueError(f"{flag} {value!r}: expected one of {(*choices, 'checkpoint')}")
        if value != "checkpoint":
            change[key] = value
    predictor.preprocess = dataclasses.replace(predictor.preprocess, **change)
    predictor.force = bool(opts.get("force"))


def _provenance_fn(predictor):  # type: ignore[no-untyped-def]
    """The BatchWriter's provenance callback (see :mod:`transmed.inference.provenance`)."""

    def document(case, result, names):  # type: ignore[no-untyped-def]
        series = {m: str(p) for m, p in case.images.items()}
        return predictor.provenance(result, names, case_id=case.case_id, series=series)

    return document
