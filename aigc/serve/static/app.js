// The aigc web page: pick a model, stream text from /v1/completions (or /v1/chat/completions
// for chat models), or generate an image grid from /v1/images/generations. Plain JS, no CDN.
"use strict";

const $ = (id) => document.getElementById(id);
let models = [];
let controller = null;      // AbortController of the running text request
let history = [];           // chat turns [{role, content}]

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

function status(message, ok = false) {
  $("status").textContent = message || "";
  $("status").className = ok ? "ok" : "";
}

async function errorOf(response) {
  try {
    const body = await response.json();
    return (body.error && body.error.message) || response.statusText;
  } catch (e) {
    return response.status + " " + response.statusText;
  }
}

function current() {
  return models.find((m) => m.id === $("model").value);
}

async function loadModels() {
  const previous = $("model").value;
  const response = await fetch("/v1/models", { headers: headers() });
  if (!response.ok) {
    status((await errorOf(response)) + (response.status === 401 ? " (enter the API key above)" : ""));
    return;
  }
  models = (await response.json()).data;
  $("model").innerHTML = "";
  for (const m of models) {
    const option = document.createElement("option");
    option.value = m.id;
    // "chat" only for a model trained on conversations; a template alone (tang-base) continues text
    const kind = m.aigc.kind === "image" ? "image" : m.aigc.chat_trained ? "chat" : "text";
    option.textContent = `${m.id} (${kind}, ${m.aigc.family})`;
    $("model").append(option);
  }
  if (models.some((m) => m.id === previous)) $("model").value = previous;
  status("", true);
  showModel();
}

function showModel() {
  const m = current();
  if (!m) return;
  const image = m.aigc.kind === "image";
  $("text-panel").hidden = image;
  $("image-panel").hidden = !image;
  if (image) {
    $("class").innerHTML = "";
    const choices = m.aigc.classes.length ? ["every class", ...m.aigc.classes] : ["(unconditional)"];
    for (const c of choices) {
      const option = document.createElement("option");
      option.value = c === "every class" || c === "(unconditional)" ? "" : c;
      option.textContent = c;
      $("class").append(option);
    }
    $("size").innerHTML = "";
    m.aigc.sizes.forEach((s, i) => {
      const option = document.createElement("option");
      option.value = s;
      option.textContent = s + (i === 0 ? " (native)" : "");
      $("size").append(option);
    });
    $("size").value = m.aigc.sizes[Math.min(2, m.aigc.sizes.length - 1)];
    $("model-info").textContent = m.aigc.prompt ? "text to image" :
      m.aigc.classes.length ? `${m.aigc.classes.length} classes` : "";
    $("img-prompt-row").hidden = !m.aigc.prompt;
    $("class-label").hidden = !!m.aigc.prompt;
    const d = m.aigc.defaults;
    for (const el of document.querySelectorAll(".diffusion")) el.hidden = !d;
    if (d) {
      $("img-steps").value = d.steps;
      $("img-guidance").value = d.guidance_scale;
    }
  } else {
    const d = m.aigc.defaults;
    $("temperature").value = d.temperature;
    $("top_p").value = d.top_p;
    $("top_k").value = d.top_k;
    $("max_tokens").value = d.max_tokens;
    const chat = m.aigc.chat_trained;
    $("system-row").hidden = !chat;
    $("history").hidden = !chat;
    $("clear").hidden = !chat;
    $("poem-row").hidden = chat || !m.aigc.poems;
    showPoemForm();
    $("model-info").textContent = m.aigc.context_length ? `context ${m.aigc.context_length} tokens` : "";
  }
}

function musicMode() {
  const m = current();
  return m && m.aigc.kind === "text" && m.aigc.music;
}

function poemMode() {
  const m = current();
  return m && m.aigc.kind === "text" && !m.aigc.chat_trained && m.aigc.poems && $("poem-form").value !== "";
}

function showPoemForm() {
  const chat = current().aigc.chat_trained, poem = poemMode(), music = musicMode();
  $("prompt-label").textContent = chat ? "Message" : poem ? "Theme (the poem's title)" : music ?
    "Tune header (ABC: meter, key, tune type)" : "Prompt";
  $("prompt").placeholder = chat ? "Your message" : poem ? "秋天的落叶" : music ? "R:jig\nM:6/8\nK:D" :
    "Text to continue";
  $("music-out").hidden = true;
}

// A music model: ABC from /v1/music, with its audio (where the server has FluidSynth), MIDI and piano roll.
async function generateTune() {
  const m = current();
  const body = { model: m.id, prompt: $("prompt").value, seed: number("seed"), max_tokens: number("max_tokens"),
                 temperature: number("temperature"), top_p: number("top_p"), formats: ["mid", "png", "wav"] };
  $("output").textContent = "";
  $("text-stats").textContent = "";
  $("music-out").hidden = true;
  $("generate").disabled = true;
  status("composing…", true);
  try {
    let response = await fetch("/v1/music", { method: "POST", headers: headers(), body: JSON.stringify(body) });
    if (!response.ok) {
      const why = await errorOf(response);
      if (!/FluidSynth|soundfont/.test(why)) throw new Error(why);
      body.formats = ["mid", "png"];  // no audio on this server: MIDI and the piano roll still come
      response = await fetch("/v1/music", { method: "POST", headers: headers(), body: JSON.stringify(body) });
      if (!response.ok) throw new Error(await errorOf(response));
    }
    const tune = (await response.json()).data[0];
    $("output").textContent = tune.abc;
    if (!tune.parses) {
      $("text-stats").textContent = `this tune does not parse: ${tune.error}`;
    } else {
      $("text-stats").textContent = `${tune.notes} notes, ${tune.seconds.toFixed(1)} s with repeats; seed ${tune.seed}`;
      $("tune-audio").hidden = !tune.wav_base64;
      if (tune.wav_base64) $("tune-audio").src = "data:audio/wav;base64," + tune.wav_base64;
      $("tune-midi").href = "data:audio/midi;base64," + tune.mid_base64;
      $("tune-roll").src = "data:image/png;base64," + tune.png_base64;
      $("music-out").hidden = false;
    }
    status("", true);
  } catch (e) {
    status("error: " + e.message);
  } finally {
    $("generate").disabled = false;
  }
}

async function generatePoem() {
  const m = current();
  const body = { model: m.id, theme: $("prompt").value.trim(), form: $("poem-form").value,
                 acrostic: $("acrostic").value.trim(), n: 4, seed: number("seed") };
  $("output").textContent = "";
  $("text-stats").textContent = "";
  $("generate").disabled = true;
  status("writing 4 candidates…", true);
  const start = performance.now();
  try {
    const response = await fetch("/v1/poems", { method: "POST", headers: headers(), body: JSON.stringify(body) });
    if (!response.ok) throw new Error(await errorOf(response));
    const best = (await response.json()).data[0];
    const ok = best.form_ok && best.rhyme_ok && best.tone === 1;
    $("output").textContent = best.text;
    $("text-stats").textContent = `checker: ${ok ? "keeps the rules" : "breaks a rule"} (${best.template}, ` +
      `rhyme ${best.rhyme_group}); best of 4 by log-likelihood ${best.score.toFixed(3)} per character, ` +
      `seed ${best.seed}; ${((performance.now() - start) / 1000).toFixed(2)} s`;
    status("", true);
  } catch (e) {
    status("error: " + e.message);
  } finally {
    $("generate").disabled = false;
  }
}

function number(id) {
  const v = $(id).value.trim();
  return v === "" ? undefined : Number(v);
}

function renderHistory() {
  $("history").innerHTML = "";
  for (const turn of history) {
    const div = document.createElement("div");
    div.className = "turn " + turn.role;
    div.textContent = turn.content;
    $("history").append(div);
  }
}

// Read a server-sent-event stream, calling onData with each parsed `data:` JSON object.
async function readEvents(response, onData) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return;
        onData(JSON.parse(data));
      }
    }
  }
}

async function generateText() {
  const m = current();
  const chat = m.aigc.chat_trained;
  const prompt = $("prompt").value;
  const body = {
    model: m.id, stream: true, temperature: number("temperature"), top_p: number("top_p"),
    top_k: number("top_k"), max_tokens: number("max_tokens"), seed: number("seed"),
    stream_options: { include_usage: true },
  };
  let url = "/v1/completions";
  if (chat) {
    url = "/v1/chat/completions";
    const system = $("system").value.trim();
    history.push({ role: "user", content: prompt });
    body.messages = (system ? [{ role: "system", content: system }] : []).concat(history);
    renderHistory();
    $("prompt").value = "";
  } else {
    body.prompt = prompt;
  }
  $("output").textContent = chat ? "" : prompt;
  $("text-stats").textContent = "";
  $("generate").disabled = true;
  $("stop").disabled = false;
  status("generating…", true);
  controller = new AbortController();
  const start = performance.now();
  let first = null, tokens = 0, reply = "";
  try {
    const response = await fetch(url, { method: "POST", headers: headers(), body: JSON.stringify(body),
                                        signal: controller.signal });
    if (!response.ok) throw new Error(await errorOf(response));
    await readEvents(response, (chunk) => {
      if (chunk.error) throw new Error(chunk.error.message);
      if (chunk.usage) tokens = chunk.usage.completion_tokens;
      for (const choice of chunk.choices || []) {
        const piece = chat ? (choice.delta && choice.delta.content) || "" : choice.text || "";
        if (piece && first === null) first = performance.now();
        reply += piece;
        $("output").textContent += piece;
      }
    });
    const seconds = (performance.now() - start) / 1000;
    const ttft = first === null ? "" : `, first token after ${((first - start) / 1000).toFixed(2)} s`;
    $("text-stats").textContent = `${tokens} tokens in ${seconds.toFixed(2)} s${ttft}`;
    status("", true);
  } catch (e) {
    status(e.name === "AbortError" ? "stopped" : "error: " + e.message, e.name === "AbortError");
  } finally {
    if (chat) {
      if (reply) history.push({ role: "assistant", content: reply });
      else history.pop();
      renderHistory();
      $("output").textContent = "";
    }
    $("generate").disabled = false;
    $("stop").disabled = true;
    controller = null;
  }
}

async function generateImages() {
  const m = current();
  const n = number("n-images") || 1;
  const diffusion = !!m.aigc.defaults;
  const body = { model: m.id, prompt: m.aigc.prompt ? $("img-prompt").value : $("class").value, n,
                 size: $("size").value, response_format: "b64_json", seed: number("img-seed") };
  if (diffusion) Object.assign(body, { steps: number("img-steps"), guidance_scale: number("img-guidance"),
                                       stream: true });
  $("img-generate").disabled = true;
  $("download").disabled = true;
  status("generating…", true);
  const bar = $("img-progress");
  bar.value = 0;
  bar.hidden = !diffusion;
  const start = performance.now();
  try {
    const response = await fetch("/v1/images/generations", { method: "POST", headers: headers(),
                                                             body: JSON.stringify(body) });
    if (!response.ok) throw new Error(await errorOf(response));
    let data = [];
    if (diffusion) {  // server-sent events: progress after every sampler step, then the images
      let failed = null, completed = false;
      await readEvents(response, (event) => {
        if (event.error) failed = event.error.message;
        else if (event.type === "image_generation.progress") {
          bar.max = event.total_steps;
          bar.value = event.step;
          status(`denoising: step ${event.step} of ${event.total_steps}`, true);
        } else if (event.type === "image_generation.completed") {
          data = event.data;
          completed = true;
        }
      });
      if (failed) throw new Error(failed);
      if (!completed) throw new Error("the stream ended before its images arrived");
    } else data = (await response.json()).data;
    showImages(data);
    $("img-stats").textContent = `${data.length} images in ${((performance.now() - start) / 1000).toFixed(2)} s`;
    $("download").disabled = data.length === 0;
    status("", true);
  } catch (e) {
    status("error: " + e.message);
  } finally {
    $("img-generate").disabled = false;
    bar.hidden = true;
  }
}

function showImages(data) {
  $("grid").innerHTML = "";
  for (const item of data) {
    const figure = document.createElement("figure");
    const img = document.createElement("img");
    img.src = "data:image/png;base64," + item.b64_json;
    img.alt = item.revised_prompt || "generated image";
    figure.append(img);
    if (item.revised_prompt) {
      const caption = document.createElement("figcaption");
      caption.textContent = item.revised_prompt;
      figure.append(caption);
    }
    $("grid").append(figure);
  }
}

// Tile the shown images into one PNG (10 per row, 2 px white gaps) and download it.
async function downloadGrid() {
  const imgs = [...document.querySelectorAll("#grid img")];
  if (!imgs.length) return;
  await Promise.all(imgs.map((img) => (img.complete ? null : new Promise((r) => (img.onload = r)))));
  const w = imgs[0].naturalWidth, h = imgs[0].naturalHeight, pad = 2;
  const cols = Math.min(10, imgs.length), rows = Math.ceil(imgs.length / cols);
  const canvas = document.createElement("canvas");
  canvas.width = cols * (w + pad) + pad;
  canvas.height = rows * (h + pad) + pad;
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.imageSmoothingEnabled = false;
  imgs.forEach((img, i) => {
    ctx.drawImage(img, pad + (i % cols) * (w + pad), pad + Math.floor(i / cols) * (h + pad), w, h);
  });
  const link = document.createElement("a");
  link.download = `aigc-${current().id}-grid.png`;
  link.href = canvas.toDataURL("image/png");
  link.click();
}

$("model").addEventListener("change", showModel);
$("api-key").addEventListener("change", () => {
  localStorage.setItem("aigc-api-key", $("api-key").value);
  loadModels();
});
$("generate").addEventListener("click", () => (poemMode() ? generatePoem() : musicMode() ? generateTune() :
  generateText()));
$("poem-form").addEventListener("change", showPoemForm);
$("stop").addEventListener("click", () => controller && controller.abort());
$("clear").addEventListener("click", () => { history = []; renderHistory(); $("output").textContent = ""; });
$("prompt").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey) && !$("generate").disabled) generateText();
});
$("img-generate").addEventListener("click", generateImages);
$("download").addEventListener("click", downloadGrid);
$("api-key").value = localStorage.getItem("aigc-api-key") || "";
loadModels();
