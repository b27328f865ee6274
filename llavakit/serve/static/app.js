// llavakit web chat: talks to this server's OpenAI-compatible API (/v1/chat/completions, stream: true).
// Multi-turn state lives here; an attached image goes with the next user message as an image_url part.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { model: null, messages: [], image: null, controller: null };

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

async function loadModel() {
  try {
    const resp = await fetch("/v1/models", { headers: headers() });
    const body = await resp.json();
    if (!resp.ok) throw new Error(body.error ? body.error.message : resp.statusText);
    const card = body.data[0];
    state.model = card.id;
    $("model").textContent = card.id + (card.vision ? "" : " (text only)");
    showError("");
  } catch (err) {
    $("model").textContent = "not connected";
    showError("Cannot list models: " + err.message + " (an API key may be needed: see Settings)");
  }
}

// --- image: choose, drop or paste --------------------------------------------------------------
function setImage(file) {
  if (!file || !file.type.startsWith("image/")) return;
  const reader = new FileReader();
  reader.onload = () => {
    state.image = reader.result;
    $("preview").src = reader.result;
    $("preview").hidden = false;
    $("drop-hint").hidden = true;
    $("clear-image").hidden = false;
  };
  reader.readAsDataURL(file);
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
function addBubble(role, text, image) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  if (image) {
    const img = document.createElement("img");
    img.src = image;
    div.appendChild(img);
  }
  const span = document.createElement("span");
  span.className = "text";
  span.textContent = text;
  div.appendChild(span);
  $("log").appendChild(div);
  $("log").scrollTop = $("log").scrollHeight;
  return div;
}

function note(bubble, text) {
  const n = document.createElement("span");
  n.className = "note";
  n.textContent = text;
  bubble.appendChild(n);
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").disabled = !busy;
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

async function send(text) {
  if (!state.model) await loadModel();
  if (!state.model) return;
  const image = state.image;
  const content = image
    ? [{ type: "image_url", image_url: { url: image } }, { type: "text", text: text }]
    : text;
  state.messages.push({ role: "user", content: content });
  addBubble("user", text, image);
  clearImage();
  const bubble = addBubble("assistant", "");
  const out = bubble.querySelector(".text");
  bubble.dataset.state = "streaming";
  bubble.dataset.chunks = "0";
  showError("");
  setBusy(true);
  const controller = new AbortController();
  state.controller = controller;
  const system = $("system").value.trim();
  const body = {
    model: state.model,
    messages: (system ? [{ role: "system", content: system }] : []).concat(state.messages),
    stream: true,
    temperature: Number($("temperature").value),
    max_tokens: Number($("max-tokens").value),
  };
  let finish = null;
  try {
    const resp = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(body), signal: controller.signal,
    });
    if (!resp.ok) {
      const err = await resp.json().catch(() => ({}));
      throw new Error(err.error ? err.error.message : resp.status + " " + resp.statusText);
    }
    await readStream(resp, (chunk) => {
      if (chunk.error) throw new Error(chunk.error.message);
      const choice = chunk.choices && chunk.choices[0];
      if (!choice) return;
      if (choice.delta && choice.delta.content) {
        out.textContent += choice.delta.content;
        bubble.dataset.chunks = String(Number(bubble.dataset.chunks) + 1);
        $("log").scrollTop = $("log").scrollHeight;
      }
      if (choice.finish_reason) finish = choice.finish_reason;
    });
    state.messages.push({ role: "assistant", content: out.textContent });
    bubble.dataset.state = "done";
    if (finish === "length") note(bubble, "(stopped at max tokens)");
  } catch (err) {
    if (err.name === "AbortError") {  // the stop button: keep what arrived as the answer
      state.messages.push({ role: "assistant", content: out.textContent });
      bubble.dataset.state = "stopped";
      note(bubble, "(stopped)");
    } else {
      state.messages.pop();  // the user turn got no answer: drop it so the conversation stays valid
      bubble.dataset.state = "error";
      note(bubble, "(error)");
      showError(err.message);
    }
  } finally {
    state.controller = null;
    setBusy(false);
  }
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
});
$("api-key").addEventListener("change", () => {
  sessionStorage.setItem("llavakit-api-key", $("api-key").value);
  loadModel();
});
$("api-key").value = sessionStorage.getItem("llavakit-api-key") || "";
loadModel();
