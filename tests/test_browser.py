"""The chat page in a real headless Chromium (Debian's, driven by Playwright) against `medtune serve`
(llama.cpp's llama-server for the GGUF quants): it loads, shows the disclaimer, streams an answer,
switches the quant, compares both, splits reasoning from the answer, asks for the API key before
showing any model control, fits a 420 px phone screen, and is saved as a screenshot under the
test's tmp dir."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from serve_fixtures import running_server, tiny_gguf_run  # noqa: F401 - a fixture

CHROMIUM = Path("/usr/bin/chromium")
# The machine's network is closed: every background connection Chromium tries would fail or hang.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _need_browser() -> None:
    missing = [what for what, ok in (("/usr/bin/chromium (apt-get install chromium)", CHROMIUM.is_file()),
                                     ("the playwright package (pip install playwright)", _has_playwright()))
               if not ok]
    if missing:
        if os.environ.get("CI"):  # ./quickstart test installs both: in CI their absence is a failure
            pytest.fail(f"browser test cannot run: missing {', '.join(missing)}")
        pytest.skip(f"missing {', '.join(missing)}")


def _has_playwright() -> bool:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture
def page(tmp_path):
    _need_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as driver:
        context = driver.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1200, "height": 800},
        )
        try:
            yield context.new_page()
        finally:
            context.close()


def _watch_answers(page) -> None:
    """Record the answer's length after every DOM change, to see it grow while the reply streams."""
    page.evaluate("""() => {
        window.__lengths = [];
        new MutationObserver(() => {
            const answers = document.querySelectorAll('#chat .msg.assistant .answer');
            if (answers.length) window.__lengths.push(answers[answers.length - 1].textContent.length);
        }).observe(document.getElementById('chat'), {subtree: true, childList: true, characterData: true});
    }""")


@pytest.mark.slow
def test_chat_page_streams_switches_quant_and_compares(page, tiny_gguf_run, tmp_path):
    with running_server(str(tiny_gguf_run), "--n-ctx", "512") as server:
        page.goto(server.url + "/")
        assert "not a medical device" in page.locator("#disclaimer").inner_text()
        assert page.locator("#disclaimer").is_visible()
        page.wait_for_function("document.querySelectorAll('#model option').length === 2")
        assert page.locator("#model").input_value() == "Q8_0"
        assert page.locator("#system").input_value() == "Answer briefly."  # the run's own system prompt, editable
        page.fill("#system", "You are a careful medical assistant.")
        # enough tokens that the stream spans several network reads (24 once came in one read)
        page.fill("#max-tokens", "120")

        _watch_answers(page)
        page.fill("#question", "What causes a stiff neck with fever?")
        page.press("#question", "Enter")
        first = page.locator("#chat .msg.assistant").nth(0)
        first.locator(".meta").wait_for(state="visible")
        page.wait_for_function("/^\\d+ tokens? in [0-9.]+ s/.test(document.querySelector('#chat .msg.assistant .meta').textContent)", timeout=60_000)
        page.wait_for_function("document.querySelector('#chat .msg.assistant .meta').textContent.includes('tokens')", timeout=60_000)
        lengths = page.evaluate("window.__lengths")
        assert len({n for n in lengths if n > 0}) >= 2, f"the answer did not grow piece by piece: {lengths}"
        assert first.get_attribute("data-model") == "Q8_0"
        assert page.locator("#chat .msg.user").first.inner_text() == "What causes a stiff neck with fever?"

        page.select_option("#model", "F16")
        page.fill("#question", "And how is it treated?")
        page.press("#question", "Enter")
        second = page.locator("#chat .msg.assistant").nth(1)
        page.wait_for_function("document.querySelectorAll('#chat .msg.assistant .meta')[1]?.textContent.includes('tokens')", timeout=60_000)
        assert second.get_attribute("data-model") == "F16"
        assert second.locator(".who").inner_text() == "F16"
        assert second.locator(".answer").inner_text().strip()

        page.check("#compare")
        page.fill("#question", "Compare both.")
        page.press("#question", "Enter")
        page.wait_for_function(
            "[...document.querySelectorAll('#chat .turn')].pop().querySelectorAll('.meta').length === 2 && "
            "[...[...document.querySelectorAll('#chat .turn')].pop().querySelectorAll('.meta')].every(m => m.textContent.includes('tokens'))",
            timeout=90_000)
        boxes = page.locator("#chat .turn").last.locator(".msg.assistant")
        assert [boxes.nth(i).get_attribute("data-model") for i in range(2)] == ["F16", "Q8_0"]

        shot = tmp_path / "chat-page.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
    assert "Traceback" not in server.output()


@pytest.mark.slow
def test_page_shows_reasoning_apart_from_the_final_answer(page, tiny_gguf_run):
    with running_server(str(tiny_gguf_run), "--n-ctx", "256") as server:
        page.goto(server.url + "/")
        split = page.evaluate("""() => [
            splitReasoning("Fever and neck stiffness point to the meninges. Migraine has no fever.\\nTherefore, the answer is B. Meningitis."),
            splitReasoning("<think>Neck stiffness means meningism.</think>Meningitis (B)."),
            splitReasoning("<think>still thinking"),
            splitReasoning("Just an answer."),
        ]""")
    assert split[0] == {"reasoning": "Fever and neck stiffness point to the meninges. Migraine has no fever.",
                        "answer": "Therefore, the answer is B. Meningitis.", "thinking": False}
    assert split[1] == {"reasoning": "Neck stiffness means meningism.", "answer": "Meningitis (B).", "thinking": False}
    assert split[2]["thinking"] is True and split[2]["answer"] == ""
    assert split[3] == {"reasoning": "", "answer": "Just an answer.", "thinking": False}


@pytest.mark.slow
def test_page_asks_for_the_key_before_showing_models(page, tiny_gguf_run):
    with running_server(str(tiny_gguf_run), "--n-ctx", "256", "--parallel", "2", "--api-key", "page-key") as server:
        page.goto(server.url + "/")
        page.locator("#key-box").wait_for(state="visible")
        assert "API key" in page.locator("#status").inner_text()
        for control in ("#model-picker", "#compare-toggle", "#backend"):  # no empty stubs before the key
            assert not page.locator(control).is_visible(), control
        page.fill("#api-key", "page-key")
        page.click("#key-save")
        page.wait_for_function("document.querySelectorAll('#model option').length === 2")
        assert page.locator("#model-picker").is_visible() and page.locator("#compare-toggle").is_visible()
        page.fill("#max-tokens", "8")
        page.fill("#question", "hello")
        page.press("#question", "Enter")
        page.wait_for_function("document.querySelector('#chat .msg.assistant .meta')?.textContent.includes('tokens')", timeout=60_000)


@pytest.mark.slow
def test_page_fits_a_phone_screen(page, tiny_gguf_run, tmp_path):
    # Named as the demo's run is ("demo", Q4_K_M and Q8_0, context 4096): that header overflowed 420 px.
    run = tmp_path / "demo"
    (run / "gguf").mkdir(parents=True)
    for quant, source in (("Q4_K_M", "tiny-Q8_0.gguf"), ("Q8_0", "tiny-F16.gguf")):
        shutil.copy(tiny_gguf_run / "gguf" / source, run / "gguf" / f"demo-{quant}.gguf")
    (run / "config.yaml").write_text("name: demo\n")
    (run / "manifest.json").write_text('{"stages": {}}\n')
    with running_server(str(run), "--n-ctx", "4096", "--parallel", "1") as server:
        page.set_viewport_size({"width": 420, "height": 860})
        page.goto(server.url + "/")
        page.wait_for_function("document.querySelectorAll('#model option').length === 2")
        page.check("#compare")
        page.fill("#max-tokens", "12")
        page.fill("#question", "A question with a long word: " + "pneumonoultramicroscopicsilicovolcanoconiosis" * 3)
        page.press("#question", "Enter")
        page.wait_for_function("[...document.querySelectorAll('#chat .meta')].filter(m => m.textContent.includes('tokens')).length === 2",
                               timeout=90_000)
        overflow = page.evaluate("() => document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0, f"the page is {overflow} px wider than a 420 px screen"
        wide = page.evaluate("""() => [...document.querySelectorAll('body *')]
            .filter(e => e.getBoundingClientRect().right > document.documentElement.clientWidth + 1)
            .map(e => e.tagName + '#' + e.id + '.' + e.className)""")
        assert not wide, f"elements past the right edge: {wide}"
        page.screenshot(path=str(tmp_path / "chat-page-420.png"), full_page=True)


@pytest.mark.slow
def test_compare_all_answers_the_quants_in_turn_on_a_cpu(page, tiny_gguf_run):
    """On the CPU the quants' servers would fight over the cores: the page asks them one after another,
    the picked one first, and shows the others waiting their turn."""
    with running_server(str(tiny_gguf_run), "--n-ctx", "512") as server:
        page.goto(server.url + "/")
        page.wait_for_function("document.querySelectorAll('#model option').length === 2")
        info = page.evaluate("fetch('/medtune/info').then(r => r.json())")
        if info["devices"]:
            pytest.skip(f"llama-server offloads to {info['devices']}: the quants answer together there")
        assert info["compare"] == "in_turn"
        assert "CPU" in page.locator("#backend").inner_text()
        # When each chat request was sent, and when its answer was complete (the stream's [DONE] event).
        page.evaluate("""() => {
            window.__requests = [];
            const original = window.fetch;
            window.fetch = async (url, options) => {
                if (url !== '/v1/chat/completions') return original(url, options);
                const row = {model: JSON.parse(options.body).model, start: performance.now(), end: null};
                window.__requests.push(row);
                const response = await original(url, options);
                const reader = response.body.getReader();
                const stream = new ReadableStream({async pull(controller) {
                    const {value, done} = await reader.read();
                    if (!done && new TextDecoder().decode(value).includes('data: [DONE]')) row.end = performance.now();
                    if (done) controller.close(); else controller.enqueue(value);
                }});
                return new Response(stream, {status: response.status, headers: response.headers});
            };
            window.__waiting = new Set();
            new MutationObserver(() => document.querySelectorAll('#chat .msg.waiting').forEach(
                box => window.__waiting.add(box.dataset.model + ': ' + box.querySelector('.meta').textContent))
            ).observe(document.getElementById('chat'), {subtree: true, childList: true, characterData: true, attributes: true});
        }""")
        page.select_option("#model", "F16")
        page.check("#compare")
        # enough tokens that the stream spans several network reads (24 once came in one read)
        page.fill("#max-tokens", "120")
        page.fill("#question", "What causes a stiff neck with fever?")
        page.press("#question", "Enter")
        page.wait_for_function("[...document.querySelectorAll('#chat .meta')].filter(m => m.textContent.includes('tokens')).length === 2",
                               timeout=90_000)
        requests = page.evaluate("window.__requests")
        waiting = page.evaluate("[...window.__waiting]")
        notes = page.locator("#chat .meta").all_inner_texts()
    assert [r["model"] for r in requests] == ["F16", "Q8_0"]  # the picked quant first
    assert requests[1]["start"] >= requests[0]["end"], f"the second quant was asked before the first finished: {requests}"
    assert waiting == ["Q8_0: waiting: answers after F16 (on a CPU the models answer one at a time)"]
    assert "waited" not in notes[0] and re.search(r"waited [0-9.]+ s for its turn", notes[1]), notes
