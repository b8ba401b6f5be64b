"""Summary tables stay readable in an 80-column terminal or a pipe (issue 24: "accu…", "maj…")."""

from __future__ import annotations

import io

from rich.console import Console

from medtune import ui

COLUMNS = ("artifact", "benchmark", "mode", "accuracy", "95% CI", "majority", "macro-F1", "parse fail", "n", "seconds")
ROW = ("gguf:Q4_K_M", "medtune_sample", "loglik", "62.5%", "50.2–73.4", "28.3% (A)", "0.611", "0", "64", "12.3")


def _printed(monkeypatch, width: int, rows, columns) -> str:
    console = Console(width=width, record=True, file=io.StringIO())
    monkeypatch.setattr(ui, "console", console)
    ui.print_summary("eval", rows, columns)
    return console.export_text()


def test_a_wide_table_is_stacked_at_80_columns_with_every_header_whole(monkeypatch):
    text = _printed(monkeypatch, 80, [ROW, ROW], COLUMNS)
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= 80
    for name, value in zip(COLUMNS, ROW):
        assert any(name in line and value in line for line in text.splitlines()), name


def test_a_table_that_fits_keeps_its_columns(monkeypatch):
    text = _printed(monkeypatch, 200, [ROW], COLUMNS)
    header = next(line for line in text.splitlines() if "artifact" in line)
    assert all(name in header for name in ("artifact", "benchmark", "parse fail", "seconds"))


def test_the_cli_quiets_known_library_noise_and_nothing_else():
    import logging
    import warnings

    from medtune.quiet import quiet_known_noise

    quiet_known_noise()
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    for name in ("bitsandbytes.backends.cpu.ops", "medtune.test"):
        logger = logging.getLogger(name)
        logger.addHandler(Keep())
        logger.warning("Failed to load CPU gemm_4bit_forward from kernels-community: offline")
        logger.warning("a real problem")
    assert records == ["a real problem", "Failed to load CPU gemm_4bit_forward from kernels-community: offline", "a real problem"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_known_noise()
        warnings.warn("Could not find a config file in /x - will assume that the vocabulary was not modified.")
        warnings.warn("something else")
    assert [str(w.message) for w in caught] == ["something else"]
