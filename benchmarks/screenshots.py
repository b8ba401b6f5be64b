"""The README's screenshots, made from the demo run in headless Chromium (Debian's, via Playwright).

    python benchmarks/screenshots.py            # needs runs/demo (medtune run configs/demo.yaml)

docs/serve-chat.png: `medtune serve runs/demo` and its chat page, one question asked to every
quant side by side ("compare all", greedy; on a CPU the quants answer in turn), with each reply's
reasoning opened; docs/serve-phone.png: the same page 420 px wide, as a phone shows it.
docs/report.png: the top of `medtune report runs/demo` (runs/demo/report.html).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from medtune.report import write_html_report
from medtune.rundir import RunDir

REPO = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
QUESTION = ("A 25-year-old man develops hives, wheezing, lip swelling and a blood pressure of 78/40 mmHg minutes after "
            "a bee sting. What is the first treatment?\nA. Oral antihistamine\nB. Intramuscular adrenaline\n"
            "C. Intravenous hydrocortisone\nD. Nebulised salbutamol")


@contextlib.contextmanager
def served(run: Path, *args: str, timeout: float = 300) -> Iterator[str]:
    """`medtune serve RUN ARGS --port 0` as a user runs it; yields its URL, stops it (SIGTERM) afterwards."""
    command = [sys.executable, "-m", "medtune.cli", "serve", str(run), *args, "--port", "0"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "300"})
    try:
        for line in process.stdout:  # the first lines, until it listens
            found = re.search(r"serving on (http://\S+)", line)
            if found:
                break
        else:
            raise SystemExit(f"medtune serve {run} exited ({process.wait()}) before serving")
        yield found.group(1)
    finally:
        process.terminate()
        process.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default=str(REPO / "runs" / "demo"))
    parser.add_argument("--out", default=str(REPO / "docs"))
    args = parser.parse_args()
    from playwright.sync_api import (
        sync_playwright,  # an optional dependency (the dev extra)
    )

    run, out = Path(args.run), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = write_html_report(RunDir(run))
    with tempfile.TemporaryDirectory(prefix="medtune-shots-") as profile, sync_playwright() as driver:
        context = driver.chromium.launch_persistent_context(
            profile, executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 1000})
        page = context.new_page()
        with served(run, "--n-ctx", "2048") as url:
            page.goto(url + "/")
            page.wait_for_function("document.querySelectorAll('#model option').length > 1")
            page.select_option("#model", "Q4_K_M")
            page.fill("#temperature", "0")
            page.fill("#max-tokens", "120")
            page.check("#compare")
            page.fill("#question", QUESTION)
            page.press("#question", "Enter")
            page.wait_for_function(
                "(() => { const m = document.querySelectorAll('#chat .turn .meta'); "
                "return m.length === document.querySelectorAll('#model option').length && [...m].every(x => / in [0-9.]+ s/.test(x.textContent)); })()",
                timeout=600_000)
            page.evaluate("document.querySelectorAll('details.reasoning').forEach(d => d.open = true); "
                          "document.getElementById('chat').scrollTop = 0")
            page.screenshot(path=str(out / "serve-chat.png"))
            page.set_viewport_size({"width": 420, "height": 900})  # a phone: the same page, no sideways scrolling
            page.evaluate("document.getElementById('chat').scrollTop = 0")
            page.screenshot(path=str(out / "serve-phone.png"))
        page.set_viewport_size({"width": 1100, "height": 1800})
        page.goto(report.resolve().as_uri())
        page.screenshot(path=str(out / "report.png"))
        context.close()
    for name in ("serve-chat.png", "serve-phone.png", "report.png"):
        print(f"{out / name}: {(out / name).stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
