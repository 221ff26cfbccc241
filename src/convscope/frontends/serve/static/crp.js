// The concept-relevance page: a form posted to /api/crp, the concepts drawn as cards (no HTML from strings).
"use strict";

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function img(src, alt, cls) {
  const i = el("img", null, cls);
  i.src = src;
  i.alt = alt;
  return i;
}

let info = null;
let atlases = [];

function showError(message) {
  const box = document.getElementById("error");
  box.textContent = message || "";
  box.hidden = !message;
}

function fillModel() {
  const name = document.getElementById("model").value;
  const m = info.models.find(x => x.name === name);
  const layer = document.getElementById("layer");
  layer.replaceChildren();
  for (const l of m.layers.filter(l => l.spatial)) {
    const o = el("option", l.name + (atlases.some(a => a.model === name && a.layer === l.name) ? " (atlas)" : ""));
    o.value = l.name;
    if (l.name === m.default_layer) o.selected = true;
    layer.append(o);
  }
  const sample = document.getElementById("sample");
  sample.replaceChildren();
  if (m.samples) for (const s of info.samples) {
    const o = el("option", "sample " + s.index + " (" + s.label + ")");
    o.value = String(s.index);
    sample.append(o);
  }
  sample.disabled = !m.samples;
}

function card(c) {
  const box = el("section", null, "crp-card");
  box.append(el("h3", c.name + ": " + (100 * c.share).toFixed(1) + "% of the relevance"));
  box.append(img(c.heatmap, "conditional heatmap of " + c.name, "crp-heat"));
  if (c.references) {
    box.append(el("p", "most relevant patches", "hint"));
    const row = el("div", null, "crp-refs");
    for (const r of c.references) row.append(img(r, "relevance reference", "crp-ref"));
    box.append(row);
    box.append(el("p", "most activating patches", "hint"));
    const row2 = el("div", null, "crp-refs");
    for (const r of c.activation_references) row2.append(img(r, "activation reference", "crp-ref"));
    box.append(row2);
  }
  return box;
}

function draw(d) {
  const main = document.getElementById("result");
  main.replaceChildren();
  main.append(el("h2", d.model + " @ " + d.layer + " for '" + d.target + "' (LRP " + d.composite +
    "; layer relevance " + d.layer_relevance.toPrecision(3) + " of score " + d.score.toPrecision(3) + ")"));
  for (const w of d.warnings || []) main.append(el("p", "Warning: " + w, "warn"));
  for (const a of d.assumed || []) main.append(el("p", "Assumed: " + a, "hint"));
  main.append(el("p", d.atlas ? "Reference patches from the concept atlas (" + d.atlas.images +
    " images, relevance for " +
    ({pred: "each image's predicted class", label: "each image's label"}[d.atlas.target] ||
     "class " + d.atlas.target) + ")." :
    "No concept atlas of this layer is loaded (convscope serve --atlas STORE): no reference patches.", "hint"));
  const head = el("div", null, "crp-cards");
  const inp = el("section", null, "crp-card");
  inp.append(el("h3", "input and all concepts"));
  inp.append(img(d.input, "input", "crp-heat"), img(d.heatmap, "LRP heatmap", "crp-heat"));
  head.append(inp);
  for (const c of d.concepts) head.append(card(c));
  main.append(head);
}

async function run(ev) {
  ev.preventDefault();
  showError("");
  const form = new FormData();
  for (const id of ["model", "target", "layer", "k"]) form.append(id, document.getElementById(id).value);
  const file = document.getElementById("file").files[0];
  if (file) form.append("file", file); else form.append("sample", document.getElementById("sample").value);
  const button = document.getElementById("run");
  button.disabled = true;
  try {
    const r = await fetch("/api/crp", {method: "POST", body: form});
    const d = await r.json();
    if (!r.ok) throw new Error(d.error || r.statusText);
    draw(d);
  } catch (e) {
    showError(String(e.message || e));
  } finally {
    button.disabled = false;
    document.body.dataset.ready = "1";
  }
}

async function load() {
  try {
    const [r1, r2] = await Promise.all([fetch("/api/info"), fetch("/api/crp/atlases")]);
    info = await r1.json();
    atlases = (await r2.json()).atlases;
    const model = document.getElementById("model");
    for (const m of info.models) {
      const o = el("option", m.name);
      o.value = m.name;
      model.append(o);
    }
    model.addEventListener("change", fillModel);
    fillModel();
    document.getElementById("crp-form").addEventListener("submit", run);
  } catch (e) {
    showError(String(e.message || e));
  }
  document.body.dataset.loaded = "1";
}

load();
