// convscope web app: plain JavaScript, no framework, no network beyond this server.
"use strict";

const state = { info: null, sample: null, file: null, widgets: [], last: null };
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
  const versus = $("versus");
  versus.replaceChildren(el("option", { value: "" }, "nothing (no contrast)"),
    el("option", { value: "top2" }, "runner-up class"));
  m.classes.forEach((c, i) => versus.appendChild(el("option", { value: String(i) }, `${i}: ${c}`)));
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
  markApplicable(m);
  fillMethod();
}

// Methods that do not apply to the model (the registry's `requires`, judged by the server and sent
// per model as `inapplicable`): disabled in the menu and the grid, unticked, the reason shown.
function markApplicable(m) {
  const why = m.inapplicable || {};
  for (const opt of $("method").options) {
    opt.disabled = opt.value in why;
    opt.textContent = opt.value in why ? `${opt.value} (not for ${m.name})` : opt.value;
    opt.title = why[opt.value] || "";
  }
  if ($("method").value in why) {
    $("method").value = [...$("method").options].find((o) => !o.disabled).value;
  }
  for (const box of document.querySelectorAll("#grid-methods input")) {
    const reason = why[box.value];
    box.disabled = Boolean(reason);
    if (reason) box.checked = false;
    box.parentElement.classList.toggle("inapplicable", Boolean(reason));
    box.parentElement.title = reason || state.info.methods.find((x) => x.name === box.value).summary;
  }
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
  buildOptions(m);
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

// --- target and contrast -------------------------------------------------------------------------
function targetString() {
  const a = $("target").value, b = $("versus").value;
  return b ? `${a || "pred"}-vs-${b}` : a;
}

function setTarget(text) {
  const m = /^(.+?)-vs-(.+)$/.exec(text || "");
  const a = m ? m[1] : (text || ""), b = m ? m[2] : "";
  const pick = (sel, v) => { sel.value = [...sel.options].some((x) => x.value === v) ? v : ""; };
  pick($("target"), a === "pred" || a === "predicted" ? "" : a);
  pick($("versus"), b);
}

function currentView() {
  return document.querySelector("input[name=view]:checked").value;
}

function fillView() {
  const v = currentView();
  $("grid-methods-box").hidden = v !== "methods";
  $("grid-topk-box").hidden = v !== "classes";
}

// the ticked methods, with the chosen method first (the options form applies to it)
function gridMethods() {
  const ticked = [...document.querySelectorAll("#grid-methods input:checked")].map((x) => x.value);
  return [$("method").value, ...ticked.filter((x) => x !== $("method").value)];
}

// --- requests ------------------------------------------------------------------------------------
async function explain(ev) {
  if (ev) ev.preventDefault();
  showError("");
  const fd = new FormData();
  if (!imageFields(fd)) { showError("Choose an image: upload a photo or pick a sample."); return; }
  const view = currentView();
  fd.append("model", $("model").value);
  fd.append("method", $("method").value);
  fd.append("target", targetString());
  if (!$("layer").disabled || view === "methods") fd.append("layer", $("layer").value);
  fd.append("fast", $("fast").checked && !$("fast").disabled ? "true" : "false");
  try {
    fd.append("options", JSON.stringify(readOptions()));
  } catch (e) { showError(e.message); return; }
  if (view === "methods") fd.append("methods", gridMethods().join(","));
  if (view === "classes") fd.append("topk", $("grid-topk").value);
  if (view !== "single") fd.append("kind", view);
  $("busy").hidden = false;
  document.querySelectorAll("button.go").forEach((b) => { b.disabled = true; });
  try {
    const r = await post(view === "single" ? "/api/explain" : "/api/grid", fd);
    state.last = r;
    if (view === "single") render(r); else renderGrid(r);
    showDownloads(r);
  } catch (e) {
    showError(e.message);
  } finally {
    $("busy").hidden = true;
    document.querySelectorAll("button.go").forEach((b) => { b.disabled = false; });
  }
}

function showDownloads(r) {
  for (const f of ["png", "npy", "json"]) $(`dl-${f}`).href = r.downloads[f];
  // the view, as a URL: the same fields the API takes (an upload cannot travel in a URL)
  const url = `${location.pathname}#${r.state}`;
  history.replaceState(null, "", url);
  $("permalink").href = url;
  $("permalink").title = state.file ? "an uploaded image is not part of the link" : "";
}

function pText(p) {
  return p === null || p === undefined ? "" : p.toFixed(3);
}

function renderProbs(r) {
  const probs = $("probs");
  probs.replaceChildren();
  for (const c of r.probabilities) {
    const cls = ["prob"];
    if (c.index === r.target_index) cls.push("target");
    if (c.index === r.contrast_index) cls.push("versus");
    const row = el("div", { class: cls.join(" ") });
    const pick = el("button", { type: "button", class: "name", title: `explain ${c.name}`, "data-index": String(c.index) }, c.name);
    pick.addEventListener("click", () => { $("target").value = String(c.index); $("versus").value = ""; explain(); });
    row.appendChild(pick);
    const track = el("span", { class: "track" });
    const fill = el("span", { class: "fill" });
    fill.style.width = `${(100 * c.p).toFixed(1)}%`;
    track.appendChild(fill);
    row.appendChild(track);
    row.appendChild(el("span", { class: "val" }, c.p.toFixed(3)));
    const vs = el("button", { type: "button", class: "vs", title: `explain the current class against ${c.name}`, "data-index": String(c.index) }, "vs");
    vs.disabled = c.index === r.target_index;
    vs.addEventListener("click", () => {
      if (!$("target").value && r.target_index !== null) $("target").value = String(r.target_index);
      $("versus").value = String(c.index);
      explain();
    });
    row.appendChild(vs);
    probs.appendChild(row);
  }
}

function renderNote(r) {
  const caveat = r.caveats ? ` Caveat: ${r.caveats}.` : "";
  $("note").textContent = r.summary ? `${sentence(r.summary)}${caveat}` : "";
}

// The result's own verdict (diagnostics "unreliable_because", read by the server): a badge and why.
function renderVerdict(why) {
  $("unreliable").hidden = !why;
  $("unreliable-why").textContent = why || "";
}

function render(r) {
  $("result").hidden = false;
  $("single").hidden = false;
  $("grid").hidden = true;
  const p = r.target_p === null ? "" : ` (p = ${pText(r.target_p)}${r.contrast_index === null ? "" : ` vs ${pText(r.contrast_p)}`})`;
  $("result-title").textContent = `${r.method} on ${r.model}: explains ${r.target}${p}`;
  for (const id of ["input-img", "overlay", "heatmap"]) $(id).classList.toggle("pix", r.pixelated);
  $("input-img").src = r.input;
  $("overlay").src = r.overlay;
  $("heatmap").src = r.heatmap;
  $("colorbar").src = r.colorbar;
  $("cbar-lo").textContent = r.signed ? "−1" : "0";
  $("legend").textContent = r.legend;
  $("map-range").textContent = `raw map from ${r.map_min.toPrecision(3)} to ${r.map_max.toPrecision(3)}`;
  renderProbs(r);
  renderNote(r);
  renderVerdict(r.unreliable);
  const meta = [`family ${r.family}`];
  if (r.layer) meta.push(`layer ${r.layer}`);
  const opts = Object.entries(r.options).map(([k, v]) => `${k}=${JSON.stringify(v)}`).join(", ");
  if (opts) meta.push(`options: ${opts}${r.fast ? " (quick preview)" : ""}`);
  for (const [k, v] of Object.entries(r.diagnostics)) {
    if (typeof v === "number") meta.push(`${k} = ${v.toPrecision(3)}`);
  }
  meta.push(`${r.elapsed_ms} ms` + (r.waited_ms >= 100 ? ` after ${r.waited_ms} ms in the queue` : ""));
  if (r.reference) meta.push(r.reference);
  $("meta").textContent = meta.join(" · ");
}

function renderGrid(r) {
  $("result").hidden = false;
  $("single").hidden = true;
  $("grid").hidden = false;
  const first = r.panels[0];
  const classes = r.kind === "classes";
  $("result-title").textContent = classes
    ? `${first.method} on ${r.model}: the ${r.panels.length} most probable classes`
    : `${r.panels.length} methods on ${r.model}: explain ${first.target}${first.target_p === null ? ""
      : ` (p = ${pText(first.target_p)}${first.contrast_index === null ? "" : ` vs ${pText(first.contrast_p)}`})`}`;
  $("grid-note").textContent = classes
    ? `One colour scale for all panels (${r.scale.toPrecision(3)} = 1): a brighter panel means more attribution, not another normalisation.`
    : "Each panel on its own scale (methods have different units); see its colour bar.";
  const box = $("grid-panels");
  box.replaceChildren();
  const input = el("figure");
  input.appendChild(el("img", { src: r.input, alt: "input", class: r.pixelated ? "pix" : "" }));
  input.appendChild(el("figcaption", {}, "input"));
  box.appendChild(input);
  for (const p of r.panels) {
    const f = el("figure", { class: "panel" });
    f.appendChild(el("img", { src: p.overlay, alt: `${p.method} ${p.target}`, class: r.pixelated ? "pix" : "" }));
    const label = classes ? `${p.target} · p = ${pText(p.target_p)}` : `${p.method}${p.layer ? ` @ ${p.layer}` : ""}`;
    const cap = el("figcaption", {});
    cap.appendChild(el("strong", {}, label));
    if (!classes) {
      const bar = el("span", { class: "cbar" });
      bar.append(el("span", {}, p.signed ? "−1" : "0"), el("img", { src: p.colorbar, alt: "colour bar" }), el("span", {}, "1"));
      cap.appendChild(bar);
    }
    cap.appendChild(el("span", { class: "hint" }, p.legend));
    f.appendChild(cap);
    box.appendChild(f);
  }
  $("grid-cbar").hidden = !classes;
  $("grid-cbar").replaceChildren();
  if (classes) {  // the shared scale, in the maps' own units
    $("grid-cbar").append(el("span", {}, first.signed ? `−${r.scale.toPrecision(3)}` : "0"),
      el("img", { src: first.colorbar, alt: "shared colour bar" }),
      el("span", {}, `${r.scale.toPrecision(3)} (raw map value)`));
  }
  renderProbs({ ...first, probabilities: r.probabilities, contrast_index: classes ? null : first.contrast_index });
  const notes = r.panels.map((p) => state.info.methods.find((x) => x.name === p.method));
  if (classes) renderNote(notes[0]);
  else $("note").textContent = notes.map((m) => `${m.name}: ${sentence(m.summary)}`).join("\n");
  $("meta").textContent = `${r.elapsed_ms} ms` + (r.waited_ms >= 100 ? ` after ${r.waited_ms} ms in the queue` : "");
}

// --- the view in the URL: the fields of the last answer's `state` ----------------------------------
function applyState(q) {
  const info = state.info;
  const get = (k) => q.get(k);
  if (get("model") && info.models.some((m) => m.name === get("model"))) $("model").value = get("model");
  fillModel();
  if (get("method") && info.methods.some((m) => m.name === get("method"))) $("method").value = get("method");
  fillMethod();
  if (get("layer")) $("layer").value = get("layer");
  setTarget(get("target") || "");
  $("fast").checked = get("fast") === "true";
  try { writeOptions(JSON.parse(get("options") || "{}")); } catch (_) { showError("The link's options are not JSON; they were left at their defaults."); }
  const view = ["single", "methods", "classes"].includes(get("view")) ? get("view") : "single";
  $(`view-${view}`).checked = true;
  if (get("methods")) {
    const want = get("methods").split(",");
    document.querySelectorAll("#grid-methods input").forEach((x) => { x.checked = want.includes(x.value); });
  }
  if (get("topk") && view === "classes") $("grid-topk").value = get("topk");
  fillView();
  const sample = get("sample");
  if (sample !== null && currentModel().samples && $(`sample-${sample}`)) {
    chooseSample(Number(sample), $(`sample-${sample}`));
    return true;
  }
  return false;
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
    const [r, m] = await Promise.all([fetch("/api/info"), fetch("/api/methods")]);
    state.info = await r.json();
    state.info.methods = (await m.json()).methods;  // with each option's spec: the options form
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
  $("options-reset").addEventListener("click", () => writeOptions({}));
  $("pred-vs-top2").addEventListener("click", () => { setTarget("pred-vs-top2"); });
  document.querySelectorAll("input[name=view]").forEach((x) => x.addEventListener("change", fillView));
  // method grid: every method; the first two cheap ones of each family ticked, but not the
  // attention methods (tick them for a ViT); fillModel disables those that do not apply to the model
  const ticked = {};
  for (const m of info.methods) {
    const box = el("input", { type: "checkbox", value: m.name, id: `grid-${m.name}` });
    box.checked = !m.heavy && m.family !== "attention" && (ticked[m.family] || 0) < 2;
    if (box.checked) ticked[m.family] = (ticked[m.family] || 0) + 1;
    const label = el("label", { class: "check", title: m.summary });
    label.append(box, ` ${m.name}`);
    $("grid-methods").appendChild(label);
  }
  const start = new URLSearchParams(location.hash.slice(1) || location.search.slice(1));
  const run = applyState(start);
  document.body.dataset.ready = "1";
  if (run) await explain();  // a link with a sample: show its view
}

document.addEventListener("DOMContentLoaded", init);
