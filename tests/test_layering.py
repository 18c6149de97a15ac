"""Arrows point down only (STYLE.md): every import in src/transmed, read with ``ast``.

Lazy imports inside functions count too: an upward import hidden in a function is still a
cycle. The rules name the packages each floor must never reach.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "transmed"

TOP = {"training", "inference", "evaluation", "bench", "service", "cli", "demo", "viewer",
       "federated"}  # fmt: skip
FORBIDDEN: dict[str, set[str]] = {
    # the floors below inference and training
    "io": TOP | {"models", "transforms"},
    "models": TOP | {"transforms"},
    "data": TOP | {"models"},
    "transforms": TOP | {"models"},
    "evaluation": TOP - {"evaluation"},
    # inference sits below training (validation and cross-validation call the predictor)
    "inference": TOP - {"inference"},
    "training": {"bench", "service", "cli", "demo", "viewer", "federated"},
    "service": {"training", "bench", "cli", "demo", "viewer", "federated"},
    # rooms of their own: they depend on inference, training and io, never the reverse
    "viewer": {"bench", "cli", "demo", "federated"},
    "federated": {"bench", "cli", "demo", "viewer"},
}


def _imports(path: Path, root: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``path``, relative ones resolved."""
    package = ".".join(path.relative_to(root.parent).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            # `from transmed import training` imports a subpackage by name
            found += [(node.lineno, f"{module}.{a.name}") for a in node.names]
    return found


def _floor(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "transmed" else None


def violations(root: Path = SRC) -> list[str]:
    bad = []
    for path in sorted(root.rglob("*.py")):
        own = path.relative_to(root).parts[0].removesuffix(".py")
        forbidden = FORBIDDEN.get(own, set())
        seen: set[int] = set()
        for line, module in _imports(path, root):
            target = _floor(module)
            if target is not None and target != own and target in forbidden and line not in seen:
                seen.add(line)  # one report per import statement
                bad.append(f"{path.relative_to(root.parent)}:{line} imports {module}")
    return bad


def test_imports_point_down_only() -> None:
    assert violations() == []


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    """The check itself can fail: a lazy relative import from inference up into training."""
    pkg = tmp_path / "transmed" / "inference"
    pkg.mkdir(parents=True)
    (pkg / "predictor.py").write_text(
        "def load():\n    from ..training.checkpoint import load_checkpoint\n"
    )
    (pkg / "memory.py").write_text("from transmed.bench.memory import MemoryProbe\n")
    found = violations(tmp_path / "transmed")
    assert found == [
        "transmed/inference/memory.py:1 imports transmed.bench.memory",
        "transmed/inference/predictor.py:2 imports transmed.training.checkpoint",
    ]


@pytest.mark.parametrize(
    "old,new",
    [("transmed.training.checkpoint", "transmed.models.checkpoint"),
     ("transmed.io.dicom_seg", "transmed.io.dicom.seg"),
     ("transmed.bench.memory", "transmed.inference.memory_probe")],
)  # fmt: skip
def test_moved_modules_keep_their_old_import_path(old: str, new: str) -> None:
    assert importlib.import_module(old) is importlib.import_module(new)
