// convscope web app: plain JavaScript, no framework, no network beyond this server.
"use strict";

const state = { info: null, sample: null, file: null };
const $ = (id) => document.getElementById(id);
const sentence = (s) => (s ? s[0].toUpperCase() + s.slice(1).replace(/\.$/, "") + "." : "");

function el(tag, attrs = {}, text = "") {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text) e.textContent = text;
  return e;
}

function showError(msg) {
  const box = $("error");
  box.textContent = msg;
  box.hidden = !msg;
}

function currentModel() {
  return state.info.models.find((m) => m.name === $("model").value);
}

function currentMethod() {
  return state.info.methods.find((m) => m.name === $("method").value);
}

function fillModel() {
  const m = currentModel();
  $("model-summary").textContent = m.summary || `input ${m.input.join("×")}, ${m.classes.length} classes`;
  // what the model was loaded with, and anything convscope assumed rather than was told
  const assumed = (m.assumed || []).map((a) => ` Assumed: ${a}.`).join("");
  $("model-prep").textContent = `Preprocessing: ${m.preprocessing}. Weights: ${m.weights}.${assumed}`;
  const target = $("target");
  target.replaceChildren(el("option", { value: "" }, "predicted class"));
  m.classes.forEach((c, i) => target.appendChild(el("option", { value: String(i) }, `${i}: ${c}`)));
  // The layer the API uses when none is named (the model's default_layer) is selected, and said.
  for (const id of ["layer", "browse-layer"]) {
    const sel = $(id);
    sel.replaceChildren();
    const layers = id === "layer" ? m.layers : m.layers.filter((l) => l.spatial);
    for (const l of layers) {
      const label = `${l.name} · ${l.type} ${l.shape.join("×")}${l.name === m.default_layer ? " (default)" : ""}`;
      sel.appendChild(el("option", { value: l.name }, label));
    }
    if (layers.some((l) => l.name === m.default_layer)) sel.value = m.default_layer;
    else if (id === "browse-layer" && layers.length) sel.value = layers[layers.length - 1].name;
  }
  $("layer-note").textContent = m.default_layer
    ? `Default: ${m.default_layer}, the layer ${m.name} explains when none is named.`
    : `${m.name} has no default layer; pick one.`;
  fillSamples(m);
  fillMethod();
}

// The bundled samples are digits: offered only for the models they fit.
function fillSamples(m) {
  $("samples").hidden = !m.samples;
  $("samples-or").hidden = !m.samples;
  $("no-samples").hidden = m.samples;
  $("no-samples").textContent = m.samples ? "" : `No sample images fit ${m.name}: upload an image.`;
  if (!m.samples && state.sample !== null) {
    state.sample = null;
    document.querySelectorAll("#samples button").forEach((b) => b.setAttribute("aria-selected", "false"));
    $("chosen").textContent = "no image chosen: upload an image";
  }
}

function fillMethod() {
  const m = currentMethod();
  if (!m) return;
  const caveat = m.caveats ? ` Caveat: ${m.caveats}.` : "";
  $("method-note").textContent = `${sentence(m.summary)}${caveat}`;
  $("layer").disabled = !m.needs_layer;
  const fast = Object.entries(m.fast_options).map(([k, v]) => `${k}=${JSON.stringify(v)}`).join(", ");
  $("fast").disabled = !fast;
  $("fast-note").textContent = fast ? `fast settings: ${fast}` : "this method has no cheaper settings";
}

function chooseSample(index, button) {
  state.sample = index;
  state.file = null;
  $("file").value = "";
  document.querySelectorAll("#samples button").forEach((b) => b.setAttribute("aria-selected", "false"));
  button.setAttribute("aria-selected", "true");
  $("chosen").textContent = `sample: ${state.info.samples[index].label}`;
}

function imageFields(fd) {
  if (state.file) fd.append("file", state.file, state.file.name || "upload");
  else if (state.sample !== null) fd.append("sample", String(state.sample));
  else return false;
  return true;
}

async function post(url, fd) {
  const r = await fetch(url, { method: "POST", body: fd });
  let body = null;
  try { body = await r.json(); } catch (_) { body = null; }
  if (!r.ok) {
    const wait = r.headers.get("retry-after");
    const again = wait && (r.status === 429 || r.status === 503) ? ` (try again in ${wait} s)` : "";
    throw new Error(((body && body.error) || `request failed (${r.status})`) + again);
  }
  return body;
}

async function explain(ev) {
  ev.preventDefault();
  showError("");
  const fd = new FormData();
  if (!imageFields(fd)) { showError("Choose an image: upload a photo or pick a sample."); return; }
  fd.append("model", $("model").value);
  fd.append("method", $("method").value);
  fd.append("target", $("target").value);
  if (!$("layer").disabled) fd.append("layer", $("layer").value);
  fd.append("fast", $("fast").checked && !$("fast").disabled ? "true" : "false");
  $("busy").hidden = false;
  $("explain").disabled = true;
  try {
    const r = await post("/api/explain", fd);
    render(r);
  } catch (e) {
    showError(e.message);
  } finally {
    $("busy").hidden = true;
    $("explain").disabled = false;
  }
}

function render(r) {
  $("result").hidden = false;
  const p = r.target_p === null ? "" : ` (p = ${r.target_p.toFixed(3)})`;
  $("result-title").textContent = `${r.method} on ${r.model}: explains ${r.target}${p}`;
  for (const id of ["input-img", "overlay", "heatmap"]) $(id).classList.toggle("pix", r.pixelated);
  $("input-img").src = r.input;
  $("overlay").src = r.overlay;
  $("heatmap").src = r.heatmap;
  $("colorbar").src = r.colorbar;
  $("cbar-lo").textContent = r.signed ? "−1" : "0";
  const probs = $("probs");
  probs.replaceChildren();
  for (const c of r.probabilities) {
    const row = el("div", { class: "prob" + (c.index === r.target_index ? " target" : "") });
    row.appendChild(el("span", { class: "name", title: c.name }, c.name));
    const track = el("span", { class: "track" });
    const fill = el("span", { class: "fill" });
    fill.style.width = `${(100 * c.p).toFixed(1)}%`;
    track.appendChild(fill);
    row.appendChild(track);
    row.appendChild(el("span", { class: "val" }, c.p.toFixed(3)));
    probs.appendChild(row);
  }
  const caveat = r.caveats ? ` Caveat: ${r.caveats}.` : "";
  $("note").textContent = `${sentence(r.summary)}${caveat}`;
  const meta = [`family ${r.family}`];
  if (r.layer) meta.push(`layer ${r.layer}`);
  if (r.fast) meta.push("fast settings: " + Object.entries(r.options).map(([k, v]) => `${k}=${JSON.stringify(v)}`).join(", "));
  for (const [k, v] of Object.entries(r.diagnostics)) {
    if (typeof v === "number") meta.push(`${k} = ${v.toPrecision(3)}`);
  }
  meta.push(`${r.elapsed_ms} ms` + (r.waited_ms >= 100 ? ` after ${r.waited_ms} ms in the queue` : ""));
  if (r.reference) meta.push(r.reference);
  $("meta").textContent = meta.join(" · ");
}

async function browse() {
  showError("");
  const fd = new FormData();
  if (!imageFields(fd)) { showError("Choose an image first: the browser shows how it activates a layer."); return; }
  fd.append("model", $("model").value);
  fd.append("layer", $("browse-layer").value);
  fd.append("n", $("browse-n").value);
  fd.append("vis", $("browse-vis").checked ? "true" : "false");
  $("busy").hidden = false;
  try {
    const r = await post("/api/activations", fd);
    const box = $("channels");
    box.replaceChildren();
    for (const c of r.top) {
      const f = el("figure");
      f.appendChild(el("img", { src: c.src, alt: `channel ${c.channel} activation`, class: "pix" }));
      if (c.vis) f.appendChild(el("img", { src: c.vis, alt: `channel ${c.channel} visualisation` }));
      f.appendChild(el("figcaption", {}, `${r.layer}, channel ${c.channel} · mean ${c.mean.toFixed(3)}`));
      box.appendChild(f);
    }
  } catch (e) {
    showError(e.message);
  } finally {
    $("busy").hidden = true;
  }
}

async function init() {
  try {
    const r = await fetch("/api/info");
    state.info = await r.json();
  } catch (e) {
    showError("Cannot reach the convscope server.");
    return;
  }
  const info = state.info;
  const model = $("model");
  for (const m of info.models) model.appendChild(el("option", { value: m.name }, m.name));
  const method = $("method");
  const families = [...new Set(info.methods.map((m) => m.family))];
  for (const fam of families) {
    const g = el("optgroup", { label: fam });
    for (const m of info.methods.filter((x) => x.family === fam)) g.appendChild(el("option", { value: m.name }, m.name));
    method.appendChild(g);
  }
  const samples = $("samples");
  info.samples.forEach((s, i) => {
    const b = el("button", { type: "button", class: "sample", id: `sample-${i}`, title: s.label, "aria-selected": "false" });
    b.appendChild(el("img", { src: s.src, alt: s.label }));
    b.addEventListener("click", () => chooseSample(i, b));
    samples.appendChild(b);
  });
  const mb = (info.limits.max_upload_bytes / 1048576).toFixed(0);
  const mp = (info.limits.max_pixels / 1e6).toFixed(0);
  $("limits").textContent = `${info.limits.formats.join(", ")}; up to ${mb} MB and ${mp} megapixels`;
  $("featvis-hint").textContent = info.featvis ? "; tick the box to render each channel's visualisation" : "";
  $("vis-label").hidden = !info.featvis;
  $("audit-link").hidden = !info.audit;  // a saved audit is loaded (convscope serve --audit OUT)
  model.addEventListener("change", fillModel);
  method.addEventListener("change", fillMethod);
  $("file").addEventListener("change", () => {
    const f = $("file").files[0];
    if (!f) return;
    state.file = f;
    state.sample = null;
    document.querySelectorAll("#samples button").forEach((b) => b.setAttribute("aria-selected", "false"));
    $("chosen").textContent = `upload: ${f.name}`;
  });
  $("controls").addEventListener("submit", explain);
  $("browse").addEventListener("click", browse);
  fillModel();
  document.body.dataset.ready = "1";
}

document.addEventListener("DOMContentLoaded", init);
