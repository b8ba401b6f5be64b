// medtune chat page: streams answers from the server's own /v1/chat/completions (OpenAI's
// server-sent events), with a model picker, an editable system prompt, and the reasoning shown
// apart from the final answer. Plain browser JavaScript, no build step.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { models: [], compare: "together", history: [], key: sessionStorage.getItem("medtune-api-key") || "", busy: null };

// ---- reasoning vs final answer ----------------------------------------------------------------
// A <think>...</think> block, or everything before the sentence that gives the final answer
// ("The answer is B.", "Final answer: yes"), as medtune's own models are trained to end.
const ANSWER = /\b(?:the\s+(?:final\s+|correct\s+|best\s+)?answer\s+(?:is|would\s+be)|final\s+answer\s*[:\-]|answer\s*:)/gi;

function splitReasoning(text) {
  const think = text.match(/^\s*<think>([\s\S]*?)(<\/think>|$)([\s\S]*)$/);
  if (think) return { reasoning: think[1].trim(), answer: think[3].trim(), thinking: !think[2] };
  let last = -1;
  for (const m of text.matchAll(ANSWER)) last = m.index;
  if (last <= 0) return { reasoning: "", answer: text.trim(), thinking: false };
  // Start the answer at its sentence ("Therefore, the answer is B." stays whole).
  let start = last;
  while (start > 0 && !/[.!?\n]/.test(text[start - 1])) start--;
  const reasoning = text.slice(0, start).trim();
  return { reasoning, answer: text.slice(start).trim(), thinking: false };
}

// ---- talking to the server ---------------------------------------------------------------------
function headers() {
  const h = { "Content-Type": "application/json" };
  if (state.key) h.Authorization = `Bearer ${state.key}`;
  return h;
}

async function getJSON(path) {
  const response = await fetch(path, { headers: headers() });
  if (response.status === 401) { showKeyBox("This server needs an API key."); throw new Error("API key needed"); }
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response.json();
}

async function errorText(response) {
  try {
    const body = await response.json();
    return (body.error && body.error.message) || body.detail || JSON.stringify(body);
  } catch (_) { return `HTTP ${response.status}`; }
}

// Streams one reply; onText(fullTextSoFar) after each piece. Returns {text, finish, tokens}:
// tokens from the server's usage (its last event), else the number of pieces received.
async function streamReply(model, messages, onText, signal) {
  const body = {
    model, messages, stream: true, stream_options: { include_usage: true },
    temperature: Number($("temperature").value), max_tokens: Number($("max-tokens").value),
  };
  const response = await fetch("/v1/chat/completions", { method: "POST", headers: headers(), body: JSON.stringify(body), signal });
  if (response.status === 401) { showKeyBox("Wrong or missing API key."); throw new Error("API key needed"); }
  if (!response.ok) throw new Error(await errorText(response));
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "", text = "", finish = null, pieces = 0, usage = null;
  const result = () => ({ text, finish, tokens: usage ? usage.completion_tokens : pieces });
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut).replace(/^\r?\n\r?\n/, "");
      for (const line of event.split(/\r?\n/)) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return result();
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message || "server error");
        if (chunk.usage) usage = chunk.usage;
        const choice = chunk.choices && chunk.choices[0];
        if (!choice) continue;
        const piece = choice.delta && choice.delta.content;
        if (piece) { text += piece; pieces++; onText(text); }
        if (choice.finish_reason) finish = choice.finish_reason;
      }
    }
  }
  return result();
}

// ---- the page ----------------------------------------------------------------------------------
function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

function scrollDown() { const chat = $("chat"); chat.scrollTop = chat.scrollHeight; }

function addUser(text) { $("chat").append(el("div", "msg user", text)); scrollDown(); }

function assistantBox(model) {
  const box = el("div", "msg assistant");
  box.dataset.model = model;
  box.append(el("div", "who", model));
  const details = el("details", "reasoning");
  details.append(el("summary", "", "Reasoning"));
  const reasoning = el("div", "reasoning-text");
  details.append(reasoning);
  details.hidden = true;
  const answer = el("div", "answer");
  const meta = el("div", "meta");
  box.append(details, answer, meta);
  return {
    box,
    show(text) {
      const parts = splitReasoning(text);
      details.hidden = !parts.reasoning;
      reasoning.textContent = parts.reasoning;
      answer.textContent = parts.thinking ? "" : parts.answer;
      if (parts.thinking) details.open = true;
      scrollDown();
    },
    wait(note) { box.classList.add("waiting"); meta.textContent = note; },
    start() { box.classList.remove("waiting"); meta.textContent = ""; },
    done(note) { box.classList.remove("waiting"); meta.textContent = note; },
    fail(message) { box.classList.remove("waiting"); box.classList.add("error"); answer.textContent = message; },
  };
}

// One model's reply into its box; the reply's text, or null when it failed or was stopped.
async function answerInto(box, model, messages, signal, waited) {
  box.start();
  const started = performance.now();
  try {
    const reply = await streamReply(model, messages, (text) => box.show(text), signal);
    const seconds = (performance.now() - started) / 1000;
    const ending = reply.finish === "length" ? "cut at max tokens" : "finished";
    const unit = reply.tokens === 1 ? "token" : "tokens";
    const turn = waited ? ` · waited ${waited.toFixed(1)} s for its turn` : "";
    box.done(`${reply.tokens} ${unit} in ${seconds.toFixed(1)} s, ${ending}${turn}`);
    return reply.text;
  } catch (error) {
    if (error.name === "AbortError") box.done("stopped");
    else box.fail(error.message);
    return null;
  }
}

// Every model answers. On the CPU (the server's info says "in_turn") one after another, the picked
// one first: models answering at once fight over the cores and all finish later (the demo's 3
// quants on 2 cores: 6-31 s until all were done together, 2.1-2.5 s in turn). On a GPU all at once.
async function answerAll(models, boxes, messages, signal) {
  if (state.compare !== "in_turn" || models.length < 2) {
    return Promise.all(models.map((model, i) => answerInto(boxes[i], model, messages, signal, 0)));
  }
  boxes.forEach((box, i) => { if (i > 0) box.wait(`waiting: answers after ${models[i - 1]} (on a CPU the models answer one at a time)`); });
  const asked = performance.now();
  const replies = [];
  for (const [i, model] of models.entries()) {
    if (signal.aborted) { boxes[i].done("stopped before its turn"); replies.push(null); continue; }
    $("status").textContent = `answering ${i + 1} of ${models.length}: ${model}`;
    const waited = i > 0 ? (performance.now() - asked) / 1000 : 0;
    replies.push(await answerInto(boxes[i], model, messages, signal, waited));
  }
  return replies;
}

function conversation() {
  const system = $("system").value.trim();
  return [...(system ? [{ role: "system", content: system }] : []), ...state.history];
}

async function ask(question) {
  const chosen = $("model").value;
  const models = $("compare").checked ? [chosen, ...state.models.filter((m) => m !== chosen)] : [chosen];
  addUser(question);
  state.history.push({ role: "user", content: question });
  const messages = conversation();
  const row = el("div", "turn");
  $("chat").append(row);
  const boxes = models.map((m) => { const b = assistantBox(m); row.append(b.box); return b; });
  const controller = new AbortController();
  state.busy = controller;
  setBusy(true);
  let kept = null;
  try {
    kept = (await answerAll(models, boxes, messages, controller.signal))[0];
  } finally {
    setBusy(false);
    state.busy = null;
  }
  // The picked model's answer carries the conversation on.
  if (kept !== null) state.history.push({ role: "assistant", content: kept });
  else state.history.pop();
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").hidden = !busy;
  $("status").textContent = busy ? "answering…" : "";
}

function showKeyBox(message) {
  $("key-box").hidden = false;
  $("status").textContent = message;
}

async function load() {
  const info = await getJSON("/medtune/info");
  // The model controls appear only once the server has named its models (not before a key is given).
  for (const id of ["model-picker", "backend"]) $(id).hidden = false;
  $("title").textContent = info.title;
  const devices = info.devices || [];
  $("backend").textContent = `${info.backend} · ${devices.length ? devices.join(", ") : "CPU"} · context ${info.n_ctx}`;
  state.compare = info.compare || "together";
  $("compare-toggle").title = state.compare === "in_turn"
    ? "Send each question to every served model and show the answers side by side. On a CPU they answer one after another, the picked model first: at once they would slow each other down."
    : "Send each question to every served model at once and show the answers side by side";
  $("disclaimer-text").textContent = info.disclaimer;
  if (!$("system").value) $("system").value = info.system_prompt || "";
  state.models = info.models.map((m) => m.id);
  const select = $("model");
  select.replaceChildren(...info.models.map((m) => {
    const option = el("option", "", m.size_bytes ? `${m.id} (${(m.size_bytes / 2 ** 20).toFixed(0)} MiB)` : m.id);
    option.value = m.id;
    return option;
  }));
  select.value = info.default_model;
  $("compare-toggle").hidden = state.models.length < 2;
  $("key-box").hidden = !state.key;
  $("status").textContent = "";
}

$("ask").addEventListener("submit", (event) => {
  event.preventDefault();
  const question = $("question").value.trim();
  if (!question || state.busy) return;
  $("question").value = "";
  ask(question);
});
$("question").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); $("ask").requestSubmit(); }
});
$("stop").addEventListener("click", () => state.busy && state.busy.abort());
$("reset").addEventListener("click", () => { state.history = []; $("chat").replaceChildren(); });
$("key-save").addEventListener("click", () => {
  state.key = $("api-key").value.trim();
  sessionStorage.setItem("medtune-api-key", state.key);
  load().catch((error) => { $("status").textContent = error.message; });
});

load().catch((error) => { $("status").textContent = error.message; });
