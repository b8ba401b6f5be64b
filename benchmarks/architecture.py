#!/usr/bin/env python3
"""The shape of the code at a git revision: what issue 23 promised to improve, counted the same way
before and after.

Per revision: lines per top-level folder (src/, tests/, benchmarks/, scripts/), modules over 500
lines, functions over 80 lines, import circles among medtune's modules (imports anywhere in a
module, including inside functions), imports of medtune inside functions, run-folder sub-path
literals outside rundir.py, and the `duplicates` pairs in src/ and benchmarks/ (when the
`duplicates` command is on PATH). Optionally the demo's held-out figures and GGUF sha256 from a
finished demo run folder.

  python benchmarks/architecture.py --rev 325b290 --label before [--demo-run /tmp/before/runs/demo]
  python benchmarks/architecture.py --rev HEAD --label after --demo-run runs/demo
Writes/updates benchmarks/results/architecture.json ({label: counts}) and prints a table.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from medtune.artifacts import atomic_write_json
from medtune.benchmarking import RESULTS_DIR, format_table, machine

REPO = Path(__file__).resolve().parents[1]
# A run sub-path spelled as a path: joined with `/`, or one of the names only the layout uses.
# A literal joined onto another literal (`"gguf-py" / "gguf"`) is a path inside some other tree.
SUBPATH = re.compile(
    r"""(?<!" )(?<!' )/\s*["'](data|adapter|checkpoints|merged|gguf|eval|eval-partial|rl-adapter|rl-checkpoints|predictions)["']"""
    r"""|["'](manifest\.json|MODEL_CARD\.md|report\.html|eval-partial|checkpoints|train_log\.jsonl|results\.json)["']"""
)


def checkout(rev: str, into: Path) -> Path:
    """The tree of `rev` (as committed) in a temporary folder."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def python_files(tree: Path, folder: str) -> list[Path]:
    return sorted((tree / folder).rglob("*.py")) if (tree / folder).is_dir() else []


def module_name(tree: Path, path: Path) -> str:
    parts = path.relative_to(tree / "src").with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def medtune_imports(tree: Path, path: Path) -> tuple[set[str], int]:
    """Modules of medtune this file imports (anywhere), and how many of those imports sit inside functions."""
    found: set[str] = set()
    inside = 0
    module = ast.parse(path.read_text(encoding="utf-8"))
    package = module_name(tree, path).rsplit(".", 1)[0] if "src" in path.parts else ""

    def visit(node: ast.AST, in_function: bool) -> None:
        nonlocal inside
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            names: list[str] = []
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - child.level + 1] + ([base] if base else []))
                names = [base] + [f"{base}.{a.name}" for a in child.names]
            own = [n for n in names if n == "medtune" or n.startswith("medtune.")]
            if own:
                found.update(own)
                inside += in_function
            visit(child, nested)

    visit(module, False)
    return found, inside


def import_graph(tree: Path) -> tuple[dict[str, set[str]], int]:
    files = python_files(tree, "src")
    modules = {module_name(tree, f): f for f in files}
    graph: dict[str, set[str]] = {}
    inside_total = 0
    for name, path in modules.items():
        imported, inside = medtune_imports(tree, path)
        inside_total += inside
        graph[name] = {m for m in imported if m in modules and m != name}
    return graph, inside_total


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]
    sys.setrecursionlimit(10000)

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            strong(v)
    return found


def long_functions(tree: Path, limit: int = 80) -> list[str]:
    found = []
    for path in python_files(tree, "src") + python_files(tree, "benchmarks"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > limit:
                    found.append(f"{path.relative_to(tree)}:{node.name} ({length})")
    return found


def subpath_literals(tree: Path) -> list[str]:
    found = []
    for path in python_files(tree, "src"):
        if path.name == "rundir.py":
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if SUBPATH.search(line):
                found.append(f"{path.relative_to(tree)}:{number}")
    return found


def duplicate_pairs(tree: Path) -> dict[str, int | None]:
    counts: dict[str, int | None] = {}
    for folder in ("src", "benchmarks"):
        try:
            out = subprocess.run(
                ["duplicates", "--repo", str(tree / folder), "--seconds", "60", "--most", "200"],
                capture_output=True, text=True, timeout=120,
            ).stdout
        except (OSError, subprocess.TimeoutExpired):
            counts[folder] = None
            continue
        first = out.splitlines()[0] if out else ""
        match = re.search(r"(\d+)\s+pairs?", first)
        counts[folder] = 0 if first.startswith("no duplicates") else int(match.group(1)) if match else None
    return counts


def lines_per_folder(tree: Path) -> dict[str, int]:
    result = {}
    for folder in ("src", "tests", "benchmarks", "scripts"):
        files = [p for p in (tree / folder).rglob("*") if p.is_file() and p.suffix in (".py", ".sh")] if (tree / folder).is_dir() else []
        result[folder] = sum(len(p.read_text(encoding="utf-8", errors="replace").splitlines()) for p in files)
    return result


def demo_figures(run: Path) -> dict[str, Any]:
    """The demo's held-out accuracies per artifact and mode, and the sha256 of each GGUF file."""
    manifest = json.loads((run / "manifest.json").read_text())
    results = json.loads((run / "eval" / "results.json").read_text())["results"]
    accuracy = {f"{r['artifact']}/{r['benchmark']}/{r['mode']}": r["accuracy"] for r in results}
    gguf = {o["path"]: o["sha256"] for o in manifest["stages"]["export"]["outputs"] if o["path"].endswith(".gguf")}
    return {"held_out_accuracy": accuracy, "gguf_sha256": gguf}


def measure(rev: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        tree = checkout(rev, Path(tmp))
        graph, inside = import_graph(tree)
        modules_over = [
            f"{p.relative_to(tree)} ({n})"
            for p in python_files(tree, "src") + python_files(tree, "benchmarks")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 500
        ]
        literals = subpath_literals(tree)
        found_circles = circles(graph)
        return {
            "rev": subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", rev], capture_output=True, text=True).stdout.strip(),
            "lines_per_folder": lines_per_folder(tree),
            "modules_over_500_lines": modules_over,
            "functions_over_80_lines": long_functions(tree),
            "import_circles": found_circles,
            "imports_of_medtune_inside_functions": inside,
            "stage_modules_importing_pipeline": sorted(m for m, deps in graph.items() if "medtune.pipeline" in deps and not m.startswith("medtune.commands") and m != "medtune.cli"),
            "run_subpath_literals_outside_rundir": literals,
            "duplicates_pairs": duplicate_pairs(tree),
        }


def summary_row(label: str, counts: dict[str, Any]) -> dict[str, Any]:
    return {
        "label": label,
        "rev": counts["rev"],
        "src lines": counts["lines_per_folder"]["src"],
        "bench lines": counts["lines_per_folder"]["benchmarks"],
        ">500-line modules": len(counts["modules_over_500_lines"]),
        ">80-line functions": len(counts["functions_over_80_lines"]),
        "circles": len(counts["import_circles"]),
        "imports in functions": counts["imports_of_medtune_inside_functions"],
        "subpath literals": len(counts["run_subpath_literals_outside_rundir"]),
        "dup pairs src/bench": "/".join(str(v) for v in counts["duplicates_pairs"].values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rev", default="HEAD")
    parser.add_argument("--label", required=True, help="before / after")
    parser.add_argument("--demo-run", type=Path, help="a finished demo run folder of this revision")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "architecture.json")
    args = parser.parse_args()
    counts = measure(args.rev)
    if args.demo_run:
        counts["demo"] = demo_figures(args.demo_run)
    counts["machine"] = machine()
    counts["command"] = " ".join(sys.argv)
    data = json.loads(args.out.read_text()) if args.out.is_file() else {}
    data[args.label] = counts
    atomic_write_json(args.out, data)
    print(format_table([summary_row(label, c) for label, c in data.items()]))


if __name__ == "__main__":
    main()
