"""A chat template that renders today's date (Llama 3.1/3.2's hub templates: "Today Date: ...") must
render the same text on every day: medtune pins `strftime_now` when it loads the tokenizer, and the
prepare report records the pinned date."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from llama32_fixtures import llama32_dir  # noqa: F401  (a fixture)

from medtune import pipeline
from medtune.config import DataConfig, ModelConfig, RunConfig
from medtune.data.prepare import load_prepared, read_report
from medtune.errors import ModelError
from medtune.export.modelfile import build_modelfile
from medtune.rundir import RunDir
from medtune.tokenizer import (
    PINNED_TEMPLATE_DATE,
    load_tokenizer,
    pin_template_date,
    template_pinned_date,
)

# The date logic and system preamble of the hub's Llama 3.2 Instruct template, written out for the test:
# a caller's date_string wins, else strftime_now (today), else a fixed fallback.
DATED_TEMPLATE = """{{- bos_token }}
{%- if not date_string is defined %}
    {%- if strftime_now is defined %}
        {%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}
        {%- set date_string = "26 Jul 2024" %}
    {%- endif %}
{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] | trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- for message in messages %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""
CHAT = [{"role": "user", "content": "Is 38.5 °C a fever?"}, {"role": "assistant", "content": "Yes."}]


def render_on_day(template: str, day: str, **variables) -> str:
    """Render as a runtime would on `day`: a sandboxed Jinja whose strftime_now returns that day
    (llama.cpp's and transformers' runtimes give templates such a function)."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    environment.globals["strftime_now"] = lambda fmt: day
    return environment.from_string(template).render(messages=CHAT[:1], add_generation_prompt=True,
                                                   bos_token="<|begin_of_text|>", **variables)


def test_unpinned_template_differs_from_day_to_day_and_pinned_does_not():
    assert render_on_day(DATED_TEMPLATE, "06 Dec 2026") != render_on_day(DATED_TEMPLATE, "07 Dec 2026")
    pinned = pin_template_date(DATED_TEMPLATE)
    first, second = render_on_day(pinned, "06 Dec 2026"), render_on_day(pinned, "07 Dec 2026")
    assert first == second
    assert "Today Date: 26 Jul 2024\n" in first
    assert template_pinned_date(pinned) == PINNED_TEMPLATE_DATE.isoformat() == "2024-07-26"
    assert pin_template_date(pinned) == pinned  # idempotent: the merged model's template is already pinned
    # Without strftime_now (the hub template's fallback branch) the text is the same too.
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    plain = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(DATED_TEMPLATE)
    assert plain.render(messages=CHAT[:1], add_generation_prompt=True, bos_token="<|begin_of_text|>") == first


def test_templates_without_a_date_are_unchanged_and_odd_calls_are_refused():
    plain = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    assert pin_template_date(plain) == plain and template_pinned_date(plain) is None
    with pytest.raises(ModelError, match="not a string literal"):
        pin_template_date("{% set f = '%Y' %}{{ strftime_now(f) }}")


def test_prepare_pins_the_date_records_it_and_trains_on_it(tmp_path, llama32_dir):  # noqa: F811
    template = tmp_path / "dated.jinja"
    template.write_text(DATED_TEMPLATE)
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps({"messages": CHAT}) + "\n" for _ in range(1)))
    config = RunConfig(
        name="dated", output_dir=str(tmp_path / "runs"),
        data=DataConfig(files=[str(data)], val_size=0, max_length=512),
        model=ModelConfig(base=str(llama32_dir), chat_template=str(template)),
    )
    tokenizer = load_tokenizer(config.model)
    assert "strftime_now(" not in tokenizer.chat_template
    pipeline.run_stage(config, "prepare")
    run = RunDir.of(config)
    assert read_report(run)["chat_template_date"] == "2024-07-26"
    row = load_prepared(run)["train"][0]
    text = tokenizer.decode(row["input_ids"])
    assert "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|>" in text
    assert text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\nYes.<|eot_id|>")


def test_builtin_llama_template_renders_no_date(tmp_path, llama32_dir):  # noqa: F811
    tokenizer = load_tokenizer(ModelConfig(base=str(llama32_dir), chat_template="builtin:llama3_2_instruct"))
    assert template_pinned_date(tokenizer.chat_template) is None
    assert "Date" not in tokenizer.apply_chat_template(CHAT, tokenize=False)
    with pytest.raises(ModelError, match="no built-in template"):
        load_tokenizer(ModelConfig(base=str(llama32_dir), chat_template="builtin:llama4"))


def test_pinned_template_is_what_the_tokenizer_saves(tmp_path, llama32_dir):  # noqa: F811
    """The merged model and the GGUF take their template from the saved tokenizer: it must be the pinned one."""
    from transformers import AutoTokenizer

    template = tmp_path / "dated.jinja"
    template.write_text(DATED_TEMPLATE)
    tokenizer = load_tokenizer(ModelConfig(base=str(llama32_dir), chat_template=str(template)))
    tokenizer.save_pretrained(tmp_path / "saved")
    saved = AutoTokenizer.from_pretrained(str(Path(tmp_path / "saved")))
    assert saved.chat_template == tokenizer.chat_template and template_pinned_date(saved.chat_template)


def test_ollama_modelfile_of_a_dated_template_carries_the_pinned_date(tmp_path, llama32_dir):  # noqa: F811
    """The Modelfile is derived from the (pinned) template at export: the system header it writes holds
    the pinned date, not the day the export ran, and the default system message is empty."""
    template = tmp_path / "dated.jinja"
    template.write_text(DATED_TEMPLATE)
    tokenizer = load_tokenizer(ModelConfig(base=str(llama32_dir), chat_template=str(template)))
    modelfile = build_modelfile(tokenizer, "m.gguf", end_of_turn="<|eot_id|>", runtime_adds_bos=True)
    assert modelfile.template.startswith("derived")
    header = '"<|start_header_id|>system<|end_header_id|>\\n\\nCutting Knowledge Date: December 2023\\nToday Date: 26 Jul 2024'
    assert header in modelfile.text and 'SYSTEM """"""' in modelfile.text
