"""Load a script or package from benchmarks/ as a module, for the tests of its CPU-checkable parts."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str) -> ModuleType:
    """benchmarks/<name>.py, registered under <name> (its dataclasses and pickling need a module name)."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, module)
    spec.loader.exec_module(module)
    return module


def load_benchmark_package(name: str, module: str) -> ModuleType:
    """benchmarks/<name>/<module>.py of the package `benchmarks.<name>` (what `python -m benchmarks.<name>`
    runs from the repository root), imported with its relative imports working."""
    package = f"benchmarks.{name}"
    if package not in sys.modules:
        folder = BENCHMARKS / name
        spec = importlib.util.spec_from_file_location(package, folder / "__init__.py", submodule_search_locations=[str(folder)])
        sys.modules[package] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[package])
    return importlib.import_module(f"{package}.{module}")
