// The concept-test page: draws each saved test from /api/concepts (no HTML from strings).
"use strict";

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function mean(xs) { return xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : 0; }

function bar(label, value, cls) {
  const row = el("div", null, "cbar-row");
  row.append(el("span", label, "cbar-label"));
  const track = el("span", null, "cbar-track");
  const fill = el("span", null, "cbar-fill " + cls);
  fill.style.width = Math.round(100 * Math.max(0, Math.min(1, value))) + "%";
  track.append(fill);
  row.append(track, el("span", value.toFixed(2), "cbar-value"));
  return row;
}

function layerBlock(t) {
  const box = el("section", null, "clayer" + (t.significant ? " significant" : ""));
  box.append(el("h3", t.layer));
  box.append(bar("concept", t.score, "concept"));
  box.append(bar("counterpart", mean(t.random_scores), "null"));
  box.append(bar("random sets", mean(t.set_scores), "null"));
  if (t.sensitivity !== undefined) box.append(el("p", "sensitivity " + t.sensitivity.toPrecision(2) +
    " (random sets " + mean(t.set_sensitivities || []).toPrecision(2) + ")"));
  const ps = t.p_values || {"score/counterpart": t.p_counterpart, "score/exchangeable": t.p_exchangeable};
  box.append(el("p", Object.keys(ps).map(k => "p (" + k + ") " + Number(ps[k]).toPrecision(2)).join(", ") +
    "; the " + (t.statistic || "score") + "/" + t.null + " test decides"));
  if (t.saturation !== undefined && t.saturation >= 0.5) box.append(el("p", "Score saturated: " +
    Math.round(100 * t.saturation) + "% of random directions score <= 0.1 or >= 0.9", "saturated"));
  box.append(el("p", t.verdict, "verdict"));
  return box;
}

function testBlock(d) {
  const box = el("article", null, "ctest");
  box.append(el("h2", "Concept '" + d.concept + "' for class '" + d.target_name + "': " +
    (d.significant ? "significant" : "not significant") + " at " + d.alpha));
  box.append(el("p", d.cav + " vectors, " + d.n_random + " random sets of " + d.random_size + " (" +
    d.random_source + "), " + d.n_class + " class images, " + d.n_concept + " concept images; " + d.file, "hint"));
  for (const n of d.notes || []) box.append(el("p", "Warning: " + n, "warn"));
  for (const a of (d.model_info && d.model_info.assumed) || []) box.append(el("p", "Assumed: " + a, "hint"));
  const layers = el("div", null, "clayers");
  for (const t of d.layers) layers.append(layerBlock(t));
  box.append(layers);
  return box;
}

async function load() {
  const main = document.getElementById("tests");
  try {
    const r = await fetch("/api/concepts");
    const d = await r.json();
    if (!r.ok) throw new Error(d.error || r.statusText);
    for (const t of d.tests) main.append(testBlock(t));
  } catch (e) {
    const box = document.getElementById("error");
    box.textContent = String(e.message || e);
    box.hidden = false;
  }
  document.body.dataset.ready = "1";
}

load();
