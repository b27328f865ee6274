// llavakit web chat: talks to this server's OpenAI-compatible API (/v1/chat/completions, stream: true).
// The conversation lives here (and in localStorage): each image stays attached to the user turn it
// was sent with; every request re-sends the conversation with the newest images up to the server's
// per-request limit (GET /v1/models: max_images) and says so when older ones are left out.
// Replies are rendered by markdown.js, which builds DOM nodes from text (no innerHTML).
"use strict";

const $ = (id) => document.getElementById(id);
const STORE = "llavakit-chat";
const SETTINGS = ["temperature", "top-p", "max-tokens", "seed", "stop", "system"];
const state = { model: null, maxImages: 4, messages: [], image: null, controller: null };

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

function showError(text) {
  $("error").textContent = text || "";
  $("error").hidden = !text;
}

function showNotice(text) {
  $("notice").textContent = text || "";
  $("notice").hidden = !text;
}

async function loadModel() {
  try {
    const resp = await fetch("/v1/models", { headers: headers() });
    const body = await resp.json();
    if (!resp.ok) throw new Error(body.error ? body.error.message : resp.statusText);
    const card = body.data[0];
    state.model = card.id;
    if (card.max_images) state.maxImages = card.max_images;
    $("model").textContent = card.id + (card.vision ? "" : " (text only)");
    showError("");
  } catch (err) {
    $("model").textContent = "not connected";
    showError("Cannot list models: " + err.message + " (an API key may be needed: see Settings)");
  }
}

// --- persistence: the conversation and the settings survive a reload ----------------------------
function save() {
  const settings = Object.fromEntries(SETTINGS.map((id) => [id, $(id).value]));
  try {
    localStorage.setItem(STORE, JSON.stringify({ messages: state.messages, settings }));
  } catch (err) {  // quota: keep the text, drop the images
    const light = state.messages.map((m) => ({ ...m, images: [] }));
    try { localStorage.setItem(STORE, JSON.stringify({ messages: light, settings })); } catch (e) { /* full */ }
    showNotice("The images of this conversation are too large to keep in the browser; after a reload only its text remains.");
  }
}

function restore() {
  let saved = null;
  try { saved = JSON.parse(localStorage.getItem(STORE) || "null"); } catch (err) { saved = null; }
  if (!saved) return;
  for (const [id, value] of Object.entries(saved.settings || {})) if ($(id) && value !== undefined) $(id).value = value;
  state.messages = (saved.messages || []).filter((m) => m && (m.role === "user" || m.role === "assistant"));
  for (const m of state.messages) {
    const bubble = addBubble(m.role, m.text, m.images);
    if (m.role === "assistant") bubble.dataset.state = "done";
  }
  refreshActions();
}

// --- image: choose, drop or paste --------------------------------------------------------------
function setImage(file) {
  if (!file || !file.type.startsWith("image/")) return;
  const reader = new FileReader();
  reader.onload = () => attach(reader.result);
  reader.readAsDataURL(file);
}

function attach(url) {
  state.image = url;
  $("preview").src = url;
  $("preview").hidden = false;
  $("drop-hint").hidden = true;
  $("clear-image").hidden = false;
}

function clearImage() {
  state.image = null;
  $("preview").hidden = true;
  $("preview").removeAttribute("src");
  $("drop-hint").hidden = false;
  $("clear-image").hidden = true;
  $("image-input").value = "";
}

$("image-input").addEventListener("change", (e) => setImage(e.target.files[0]));
$("clear-image").addEventListener("click", clearImage);
document.addEventListener("paste", (e) => {
  for (const item of e.clipboardData ? e.clipboardData.items : []) {
    if (item.type.startsWith("image/")) { setImage(item.getAsFile()); e.preventDefault(); return; }
  }
});
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  setImage(e.dataTransfer.files[0]);
});

// --- chat log ----------------------------------------------------------------------------------
function addBubble(role, text, images) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  div.raw = text;  // what Copy and Edit take
  div.images = images || [];
  for (const url of images || []) {
    const img = document.createElement("img");
    img.src = url;
    div.appendChild(img);
  }
  const body = document.createElement("div");
  body.className = "text";
  if (role === "assistant") Markdown.render(body, text); else body.textContent = text;
  div.appendChild(body);
  $("log").appendChild(div);
  $("log").scrollTop = $("log").scrollHeight;
  return div;
}

function note(bubble, text, cls) {
  const n = document.createElement("span");
  n.className = "note" + (cls ? " " + cls : "");
  n.textContent = text;
  bubble.appendChild(n);
}

function button(label, cls, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = "action " + cls;
  b.textContent = label;
  b.addEventListener("click", onClick);
  return b;
}

async function copyText(text, btn) {
  try {
    await navigator.clipboard.writeText(text);
  } catch (err) {  // no clipboard permission: the old way
    const area = document.createElement("textarea");
    area.value = text;
    document.body.appendChild(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  btn.textContent = "Copied";
}

// Copy on every answer; Regenerate on the last answer; Edit on the last question.
function refreshActions() {
  document.querySelectorAll(".actions").forEach((el) => el.remove());
  const bubbles = [...document.querySelectorAll("#log .msg")];
  const lastUser = bubbles.filter((b) => b.classList.contains("user")).pop();
  const done = bubbles.filter((b) => b.classList.contains("assistant") && b.dataset.state !== "error");
  done.forEach((b, k) => {
    const bar = document.createElement("div");
    bar.className = "actions";
    bar.appendChild(button("Copy", "copy", (e) => copyText(b.raw, e.target)));
    if (k === done.length - 1 && b === bubbles[bubbles.length - 1]) bar.appendChild(button("Regenerate", "regenerate", regenerate));
    b.appendChild(bar);
  });
  if (lastUser) {
    const bar = document.createElement("div");
    bar.className = "actions";
    bar.appendChild(button("Edit", "edit", editLast));
    lastUser.appendChild(bar);
  }
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").disabled = !busy;
  document.querySelectorAll(".action.regenerate, .action.edit").forEach((b) => { b.disabled = busy; });
}

// --- the request: newest images first, within the server's limit -------------------------------
function apiMessages() {
  let budget = state.maxImages, dropped = 0;
  const out = [];
  for (let i = state.messages.length - 1; i >= 0; i--) {
    const m = state.messages[i];
    const images = m.images || [];
    if (m.role !== "user" || !images.length) { out.unshift({ role: m.role, content: m.text }); continue; }
    const parts = [];
    for (const url of images) {
      if (budget > 0) { parts.push({ type: "image_url", image_url: { url } }); budget--; } else dropped++;
    }
    parts.push({ type: "text", text: m.text });
    out.unshift({ role: "user", content: parts });
  }
  return { messages: out, dropped };
}

function requestBody() {
  const { messages, dropped } = apiMessages();
  showNotice(dropped ? `${dropped} earlier image${dropped > 1 ? "s are" : " is"} no longer sent: this server ` +
    `takes at most ${state.maxImages} images per request (the newest are kept).` : "");
  const system = $("system").value.trim();
  const body = {
    model: state.model,
    messages: (system ? [{ role: "system", content: system }] : []).concat(messages),
    stream: true,
    stream_options: { include_usage: true },
  };
  for (const [key, id] of [["temperature", "temperature"], ["top_p", "top-p"], ["max_tokens", "max-tokens"]]) {
    if ($(id).value.trim() !== "") body[key] = Number($(id).value);  // empty: the server's default
  }
  if ($("seed").value.trim() !== "") body.seed = Number($("seed").value);
  const stops = $("stop").value.split("\n").filter((s) => s.length);
  if (stops.length) body.stop = stops;
  return body;
}

// --- streaming: parse server-sent events from the fetch body -----------------------------------
async function readStream(resp, onChunk) {
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) !== -1) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        onChunk(JSON.parse(data));
      }
    }
  }
}

async function generate() {
  const conversation = state.messages;  // New chat replaces it: this answer then belongs to nothing
  const bubble = addBubble("assistant", "");
  const out = bubble.querySelector(".text");
  let text = "";
  bubble.dataset.state = "streaming";
  bubble.dataset.chunks = "0";
  showError("");
  setBusy(true);
  const controller = new AbortController();
  state.controller = controller;
  let finish = null, usage = null;
  const started = performance.now();
  try {
    const resp = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(requestBody()), signal: controller.signal,
    });
    if (!resp.ok) {
      const err = await resp.json().catch(() => ({}));
      throw new Error(err.error ? err.error.message : resp.status + " " + resp.statusText);
    }
    await readStream(resp, (chunk) => {
      if (chunk.error) throw new Error(chunk.error.message);
      if (chunk.usage) usage = chunk.usage;
      const choice = chunk.choices && chunk.choices[0];
      if (!choice) return;
      if (choice.delta && choice.delta.content) {
        text += choice.delta.content;
        bubble.raw = text;
        Markdown.render(out, text);
        bubble.dataset.chunks = String(Number(bubble.dataset.chunks) + 1);
        $("log").scrollTop = $("log").scrollHeight;
      }
      if (choice.finish_reason) finish = choice.finish_reason;
    });
    conversation.push({ role: "assistant", text, images: [] });
    bubble.dataset.state = "done";
    if (finish === "length") note(bubble, "(stopped at max tokens)");
    if (usage) {
      const seconds = (performance.now() - started) / 1000;
      note(bubble, `${usage.completion_tokens} tokens · ${(usage.completion_tokens / seconds).toFixed(1)} tok/s · ` +
        `prompt ${usage.prompt_tokens}`, "stats");
    }
  } catch (err) {
    if (err.name === "AbortError") {  // the stop button: keep what arrived as the answer
      conversation.push({ role: "assistant", text, images: [] });
      bubble.dataset.state = "stopped";
      note(bubble, "(stopped)");
    } else {
      conversation.pop();  // the user turn got no answer: drop it so the conversation stays valid
      const asked = [...document.querySelectorAll("#log .msg.user")].pop();
      if (asked) asked.classList.add("unsent");
      bubble.dataset.state = "error";
      note(bubble, "(error)");
      showError(err.message);
    }
  } finally {
    state.controller = null;
    setBusy(false);
    refreshActions();
    save();
  }
}

async function send(text) {
  if (!state.model) await loadModel();
  if (!state.model) return;
  const images = state.image ? [state.image] : [];
  state.messages.push({ role: "user", text, images });
  addBubble("user", text, images);
  clearImage();
  await generate();
}

function dropLastBubble(role) {
  const bubbles = [...document.querySelectorAll("#log .msg." + role)];
  if (bubbles.length) bubbles[bubbles.length - 1].remove();
}

function regenerate() {
  if (state.controller || !state.messages.length || state.messages[state.messages.length - 1].role !== "assistant") return;
  state.messages.pop();
  dropLastBubble("assistant");
  state.messages.length && generate();
}

function editLast() {
  if (state.controller) return;
  const log = [...document.querySelectorAll("#log .msg")];
  const asked = log.filter((b) => b.classList.contains("user")).pop();
  if (!asked) return;
  log.slice(log.indexOf(asked)).forEach((b) => b.remove());  // the question and its answer
  const k = state.messages.map((m) => m.role).lastIndexOf("user");
  if (!asked.classList.contains("unsent") && k >= 0) state.messages.length = k;
  $("prompt").value = asked.raw;
  if (asked.images.length) attach(asked.images[0]);
  refreshActions();
  save();
  $("prompt").focus();
}

$("form").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("prompt").value.trim();
  if (!text || state.controller) return;
  $("prompt").value = "";
  send(text);
});
$("prompt").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("form").requestSubmit(); }
});
$("stop").addEventListener("click", () => { if (state.controller) state.controller.abort(); });
$("new-chat").addEventListener("click", () => {
  if (state.controller) state.controller.abort();
  state.messages = [];
  $("log").textContent = "";
  showError("");
  showNotice("");
  save();
});
SETTINGS.forEach((id) => $(id).addEventListener("change", save));
$("api-key").addEventListener("change", () => {
  sessionStorage.setItem("llavakit-api-key", $("api-key").value);
  loadModel();
});
$("api-key").value = sessionStorage.getItem("llavakit-api-key") || "";
restore();
loadModel();
