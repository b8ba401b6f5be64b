"""The whole pipeline on a tiny random Llama 3.2 1B Instruct look-alike with the real tokenizer:
prepare -> train -> merge -> export (F16 + Q8_0) -> eval (loglik and cot; base, merged, GGUF), then
chat; and proof that every runtime sees the prompt medtune trained on, token for token."""

from __future__ import annotations

import json
import re

import pytest
from conftest import PUBMEDQA_DIR
from llama32_fixtures import EOT, TEMPLATE, llama32_dir  # noqa: F401  (a fixture)

from medtune import pipeline
from medtune.config import RunConfig
from medtune.data.prepare import load_prepared
from medtune.data.rendering import IGNORE_INDEX
from medtune.rundir import RunDir

pytestmark = pytest.mark.slow

PUBMEDQA_TEXTS = 1000
SPECIALS = ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|end_of_text|>",
            "<|finetune_right_pad_id|>", "<|python_tag|>", "<|eom_id|>")


@pytest.fixture(scope="module")
def run(tmp_path_factory, llama32_dir):  # noqa: F811
    if not (PUBMEDQA_DIR / "ori_pqal.json").is_file():
        pytest.skip(f"needs PubMedQA's ori_pqal.json in {PUBMEDQA_DIR}")
    pytest.importorskip("llama_cpp", reason="needs llama-cpp-python (scripts/setup-llama-cpp.sh)")
    folder = tmp_path_factory.mktemp("llama32-run")
    config = RunConfig.model_validate({
        "name": "llama32",
        "output_dir": str(folder / "runs"),
        "seed": 3,
        "data": {"files": ["builtin:reasonmed-sample"], "format": "reasonmed", "val_size": 4, "max_length": 1024,
                 "limit": 24, "system_prompt": "You are a careful medical assistant."},
        "model": {"base": str(llama32_dir), "chat_template": TEMPLATE, "license": "llama3.2"},
        "lora": {"r": 4, "alpha": 8},
        "train": {"max_steps": 3, "batch_size": 2, "gradient_accumulation_steps": 1, "learning_rate": 1e-3,
                  "logging_steps": 1, "eval_steps": 3, "save_steps": 3, "test_question": False},
        "merge": {"verify_prompts": 2},
        # A random model never emits EOS: stopping is tested on the real SmolLM2 (tests/test_export.py).
        "export": {"outtype": "f16", "quant_types": ["Q8_0"], "imatrix": "off", "verify_prompts": 2,
                   "answer_max_tokens": 16, "require_eos_stop": False, "quality_chunks": 2, "quality_ctx": 128},
        "eval": {"modes": ["loglik", "cot"], "artifacts": ["base", "merged", "gguf"], "max_new_tokens": 8,
                 "benchmarks": [{"name": "pubmedqa", "path": str(PUBMEDQA_DIR), "limit": 4}]},
    })
    return config, RunDir.of(config), pipeline.run_pipeline(config)


@pytest.fixture(scope="module")
def gguf_vocab(run):
    from llama_cpp import Llama

    _, rundir, _ = run
    path = next(p for p in rundir.gguf.glob("*.gguf") if "F16" in p.name.upper())
    return Llama(model_path=str(path), vocab_only=True, verbose=False)


@pytest.fixture(scope="module")
def hf_tokenizer(run):
    from transformers import AutoTokenizer

    _, rundir, _ = run
    return AutoTokenizer.from_pretrained(str(rundir.merged))


def test_every_stage_ran_and_wrote_f16_and_a_quant(run):
    _, rundir, _ = run
    for stage in ("prepare", "train", "merge", "export", "eval"):
        assert rundir.stage_entry(stage)["status"] == "done", stage
    names = sorted(p.name for p in rundir.gguf.glob("*.gguf"))
    assert any("F16" in n.upper() for n in names) and any("Q8_0" in n.upper() for n in names), names


def test_converter_recognised_llama3_pre_tokenizer_and_special_ids(run):
    from gguf import GGUFReader

    _, rundir, _ = run
    for path in rundir.gguf.glob("*.gguf"):
        reader = GGUFReader(str(path))

        def field(key, reader=reader):
            value = reader.fields[key]
            return value.contents() if hasattr(value, "contents") else value.parts[value.data[0]].tolist()

        assert field("tokenizer.ggml.model") == "gpt2"
        assert field("tokenizer.ggml.pre") == "llama-bpe"  # not "default": the converter knew this tokenizer
        assert field("tokenizer.ggml.bos_token_id") == 128000
        assert field("tokenizer.ggml.padding_token_id") == 128004
        assert len(reader.fields["tokenizer.ggml.tokens"].data) == 128256  # one entry per token, not decoded
        assert field("llama.rope.freq_base") == 500000.0
        template = field("tokenizer.chat_template")
        assert template.endswith("{%- endif %}\n") and "| trim" in template


def test_gguf_tokenizes_like_hf_on_pubmedqa_contexts_with_special_tokens(gguf_vocab, hf_tokenizer):
    records = json.loads((PUBMEDQA_DIR / "ori_pqal.json").read_text(encoding="utf-8"))
    contexts = [c for r in records.values() for c in r["CONTEXTS"]][:PUBMEDQA_TEXTS]
    assert len(contexts) == PUBMEDQA_TEXTS
    # Every 10th text carries special tokens and the chat markup around it.
    texts = [f"{SPECIALS[i // 10 % len(SPECIALS)]}{SPECIALS[3]}user\n\n{t}{EOT}" if i % 10 == 0 else t
             for i, t in enumerate(contexts)]
    mismatches = [
        text for text in texts
        if gguf_vocab.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        != hf_tokenizer.encode(text, add_special_tokens=False)
    ]
    assert not mismatches, f"{len(mismatches)} of {len(texts)} texts differ, e.g. {mismatches[0][:200]!r}"


def _prompt_and_reply(row):
    ids, labels = list(row["input_ids"]), list(row["labels"])
    first = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
    return ids[:first], ids[first:]


def test_llama_cpp_builds_the_training_prompt_from_the_gguf_template(run, gguf_vocab):
    """llama-cpp-python's chat path: the GGUF's template through Jinja2ChatFormatter, tokenized with special
    tokens and no extra BOS (medtune.chat.gguf_prompt_tokens counts it the same way)."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    _, rundir, _ = run
    template = gguf_vocab.metadata["tokenizer.chat_template"]
    text = gguf_vocab._model.token_get_text
    formatter = Jinja2ChatFormatter(template=template, eos_token=text(gguf_vocab.token_eos()),
                                    bos_token=text(gguf_vocab.token_bos()))
    rows = [row for split in load_prepared(rundir).values() for row in split]
    assert len(rows) >= 20
    for row in rows:
        messages = json.loads(row["messages"])
        prompt_ids, reply_ids = _prompt_and_reply(row)
        response = formatter(messages=messages[:-1])
        assert response.added_special  # so llama-cpp-python adds no BOS of its own
        got = gguf_vocab.tokenize(response.prompt.encode("utf-8"), add_bos=False, special=True)
        assert got == prompt_ids
        assert reply_ids[-1] == gguf_vocab.tokenize(EOT.encode(), add_bos=False, special=True)[0]


def test_llama_cpp_native_chat_template_gives_the_training_prompt(run, gguf_vocab):
    """llama.cpp's C++ llama_chat_apply_template (what llama-server without --jinja and llama-cli use):
    it recognises the GGUF's template as Llama 3's and writes the prompt; llama.cpp's tokenizer adds BOS."""
    import ctypes

    import llama_cpp

    _, rundir, _ = run
    template = gguf_vocab.metadata["tokenizer.chat_template"].encode("utf-8")
    for row in [row for split in load_prepared(rundir).values() for row in split]:
        messages = json.loads(row["messages"])[:-1]
        chat = (llama_cpp.llama_chat_message * len(messages))(
            *[llama_cpp.llama_chat_message(m["role"].encode(), m["content"].encode("utf-8")) for m in messages]
        )
        buffer = ctypes.create_string_buffer(1 << 16)
        written = llama_cpp.llama_chat_apply_template(template, chat, len(messages), True, buffer, len(buffer))
        assert 0 < written < len(buffer), "llama.cpp does not recognise the template"
        prompt = buffer.raw[:written]
        assert gguf_vocab.tokenize(prompt, add_bos=True, special=True) == _prompt_and_reply(row)[0]


def _modelfile_pieces(text: str) -> dict[str, str]:
    """The literal text medtune's Go template writes around each role (its Go string constants or bare text)."""
    template = re.search(r'TEMPLATE """(.*?)"""', text, re.DOTALL).group(1)

    def literal(chunk: str) -> str:
        quoted = re.fullmatch(r'\{\{ (".*") \}\}', chunk, re.DOTALL)
        return json.loads(quoted.group(1)) if quoted else chunk

    role = r'if eq \.Role "{}" \}}}}(.*?)\{{\{{ \.Content \}}\}}(.*?)\{{\{{-'
    pieces = {}
    for name in ("system", "user"):
        before, after = re.search(role.format(name), template, re.DOTALL).groups()
        pieces[f"{name}_prefix"], pieces[f"{name}_suffix"] = literal(before), literal(after)
    generation = re.search(r'if \$last \}\}(.*?)\{\{ end \}\}', template, re.DOTALL).group(1)
    pieces["generation"] = literal(generation)
    pieces["bos"] = template[: template.index("{{- range")]
    return pieces


def test_ollama_modelfile_template_and_stops_give_the_training_prompt(run, gguf_vocab):
    _, rundir, _ = run
    text = rundir.modelfile.read_text()
    stops = [json.loads(s) for s in re.findall(r"^PARAMETER stop (\".*\")$", text, re.MULTILINE)]
    # <|eot_id|> first; llama.cpp also stops on every end-of-generation token of the GGUF by itself.
    assert stops[0] == EOT and "<|start_header_id|>" in stops  # a new turn's header also ends the reply
    assert set(stops) <= {EOT, "<|end_of_text|>", "<|eom_id|>", "<|start_header_id|>"}
    assert "SYSTEM" not in text  # the built-in template invents no system message
    pieces = _modelfile_pieces(text)
    # llama.cpp (Ollama's runtime) adds BOS itself (GGUF add_bos_token), so the template must not.
    assert pieces["bos"] == "" and gguf_vocab.metadata.get("tokenizer.ggml.add_bos_token") == "true"
    rows = [row for split in load_prepared(rundir).values() for row in split]
    for row in rows:
        messages = json.loads(row["messages"])[:-1]
        rendered = "".join(pieces[f"{m['role']}_prefix"] + m["content"] + pieces[f"{m['role']}_suffix"]
                           for m in messages) + pieces["generation"]
        got = gguf_vocab.tokenize(rendered.encode("utf-8"), add_bos=True, special=True)
        assert got == _prompt_and_reply(row)[0]


def test_eval_scored_loglik_and_cot_on_hf_and_gguf(run):
    _, rundir, _ = run
    results = json.loads(rundir.eval_results.read_text())
    seen = {(row["artifact"].split(":")[0], row["mode"]) for row in results["results"]}
    for artifact in ("base", "merged", "gguf"):
        for mode in ("loglik", "cot"):
            assert (artifact, mode) in seen, (artifact, mode, sorted(seen))


def test_chat_counts_the_training_prompt_and_replies_on_gguf_and_merged(run):
    from medtune.chat import ChatModel, Reply, Sampling

    _, rundir, _ = run
    row = load_prepared(rundir)["val"][0]
    messages = json.loads(row["messages"])[:-1]
    for target in (rundir.gguf_file("Q8_0"), rundir.merged):
        model = ChatModel(target, n_ctx=2048)
        try:
            assert model.prompt_tokens(messages) == len(_prompt_and_reply(row)[0])
            reply = Reply()
            "".join(model.stream(messages, Sampling(temperature=0, max_tokens=4), reply))
            assert 0 < reply.tokens <= 4 or reply.stopped_on_eos
        finally:
            model.close()


def _post(url: str, body: dict, key: str) -> dict:
    import urllib.request

    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json",
                                                                       "Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def test_llama_server_as_medtune_serve_starts_it_builds_the_training_prompt(run, gguf_vocab):
    """`medtune serve` runs llama.cpp's llama-server with --jinja on each GGUF: the prompt it builds from the
    file's template (/apply-template) and tokenizes (adding BOS itself) is the training prompt, and a chat
    completion counts exactly that many prompt tokens."""
    import socket
    import subprocess
    import time
    import urllib.request

    from medtune.llamacpp import find_tool
    from medtune.serve.gguf import server_arguments
    from medtune.serve.targets import ServedModel

    _, rundir, _ = run
    path = rundir.gguf_file("Q8_0")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    key = "medtune-test"
    arguments = server_arguments(ServedModel("llama32", path, path.stat().st_size), port, key,
                                 n_ctx=2048, parallel=1, threads=2)
    server = subprocess.Popen([str(find_tool("llama-server")), *arguments],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        rows = [row for split in load_prepared(rundir).values() for row in split]
        for row in rows:
            messages = json.loads(row["messages"])[:-1]
            prompt_ids = _prompt_and_reply(row)[0]
            prompt = _post(f"{url}/apply-template", {"messages": messages}, key)["prompt"]
            assert gguf_vocab.tokenize(prompt.encode("utf-8"), add_bos=True, special=True) == prompt_ids
        completion = _post(f"{url}/v1/chat/completions", {"messages": messages, "max_tokens": 1}, key)
        assert completion["usage"]["prompt_tokens"] == len(prompt_ids)
    finally:
        server.terminate()
        server.wait(30)
