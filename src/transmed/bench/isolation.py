"""Run one measurement in a fresh child process and get its result back as a dict.

Why a child per measurement: peak memory (RSS high-water mark) and allocator state are
per-process, and caches (oneDNN primitives, allocator pools) warmed by one model would flatter
the next. Each measurement gets a new process that has run nothing before, so each number is
independent of what ran before, and a child killed by the out-of-memory killer is reported
instead of taking the benchmark down with it.

Start method: 'forkserver' where available. The server is a clean interpreter that only
*imports* the ``preload`` modules (torch, MONAI: ~5–10 s on 2 cores) and runs no tensor op, so it
has no thread pools or allocator state to hand down; every measurement is a fresh fork of it.
That saves the import time per child without sharing any measured state. Elsewhere: 'spawn'.
"""

from __future__ import annotations

import importlib
import multiprocessing as mp
import traceback
from collections.abc import Sequence
from typing import Any


def _child_main(target: str, kwargs: dict[str, Any], conn: Any) -> None:
    try:
        module_name, _, fn_name = target.rpartition(".")
        fn = getattr(importlib.import_module(module_name), fn_name)
        result = fn(**kwargs)
        conn.send(("ok", result))
    except BaseException as exc:  # report everything, including MemoryError, to the parent
        conn.send(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=4)}"))
    finally:
        conn.close()


# Imported once by the forkserver: torch, torch._dynamo (FlopCounterMode's first use imports it)
# and the models with MONAI.
DEFAULT_PRELOAD = (
    "torch",
    "torch._dynamo",
    "transmed.bench.flops",
    "transmed.models.peers",
    "transmed.models.transmed",
)


def _context(preload: Sequence[str]) -> Any:
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        # Only takes effect when this process starts its forkserver (the first call).
        ctx.set_forkserver_preload(list(preload))
        return ctx
    return mp.get_context("spawn")


def run_isolated(
    target: str,
    kwargs: dict[str, Any],
    timeout_s: float | None = None,
    preload: Sequence[str] = DEFAULT_PRELOAD,
) -> dict:
    """Call ``target(**kwargs)`` in a fresh child process and return its dict.

    Args:
        target: dotted path of a module-level function, e.g.
            ``"transmed.bench.complexity.measure_model"``; it must return a picklable dict.
        kwargs: picklable keyword arguments.
        timeout_s: kill the child after this many seconds (``None``: wait for ever).
        preload: modules the forkserver imports once (see the module docstring).

    Returns:
        The function's dict, or ``{"status": "error", "reason": ...}`` when it raised, died
        (e.g. killed for memory) or timed out.
    """
    if "." not in target:
        raise ValueError(f"target must be a dotted 'module.function' path, got {target!r}")
    ctx = _context([*preload, target.rpartition(".")[0]])
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child_main, args=(target, kwargs, child), daemon=True)
    proc.start()
    child.close()
    kind, payload = "died", None
    try:
        if parent.poll(timeout_s):
            try:
                kind, payload = parent.recv()
            except EOFError:  # the child died before sending anything
                kind, payload = "died", None
        elif proc.is_alive():
            kind = "timeout"
    finally:
        if kind != "ok" and kind != "error" and proc.is_alive():
            proc.kill()
        proc.join(timeout=30)
        if proc.is_alive():
            proc.kill()
            proc.join()
        parent.close()
    if kind == "ok":
        if not isinstance(payload, dict):
            raise TypeError(f"{target} must return a dict, got {type(payload).__name__}")
        return payload
    if kind == "error":
        return {"status": "error", "reason": payload.strip()}
    if kind == "timeout":
        return {"status": "error", "reason": f"timed out after {timeout_s:.0f} s (child killed)"}
    code = proc.exitcode
    hint = " (killed: out of memory?)" if code is not None and code < 0 else ""
    return {"status": "error", "reason": f"child process died with exit code {code}{hint}"}
