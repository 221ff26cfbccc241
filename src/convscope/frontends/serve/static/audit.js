// convscope audit view: plain JavaScript, no framework, no network beyond this server.
"use strict";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
// matplotlib's tab10, as the HTML report colours clusters
const COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
  "#bcbd22", "#17becf"];
const color = (id) => COLORS[id % COLORS.length];
const state = { audit: null, cls: null, cluster: null, pinned: null, shown: null, hoverTimer: 0 };

function el(tag, attrs = {}, text = "") {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text) e.textContent = text;
  return e;
}

function svg(tag, attrs = {}) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  return e;
}

function showError(msg) {
  $("error").textContent = msg;
  $("error").hidden = !msg;
}

const fmt = (v) => (typeof v === "number" && Number.isFinite(v) ? v.toFixed(2) : "–");

// A PNG from the API into an <img>, through fetch so an error shows its message; 429/503 are
// retried once after Retry-After. Returns whether the picture is shown.
async function loadPng(url, img, msg, token) {
  for (let attempt = 0; attempt < 2; attempt++) {
    let r;
    try {
      r = await fetch(url);
    } catch (e) {
      if (msg) msg.textContent = "cannot reach the convscope server";
      return false;
    }
    if (r.ok) {
      const blob = await r.blob();
      if (token && !token()) return false;  // another image was asked for meanwhile
      if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
      img.src = URL.createObjectURL(blob);
      img.hidden = false;
      if (msg) msg.textContent = "";
      return true;
    }
    const wait = Number(r.headers.get("retry-after") || 0);
    if ((r.status === 429 || r.status === 503) && attempt === 0 && wait <= 10) {
      await new Promise((ok) => setTimeout(ok, 1000 * Math.max(1, wait)));
      continue;
    }
    let body = null;
    try { body = await r.json(); } catch (_) { body = null; }
    if (token && !token()) return false;
    img.hidden = true;
    if (msg) msg.textContent = (body && body.error) || `request failed (${r.status})`;
    return false;
  }
  return false;
}

function classOf(index) {
  return state.audit.classes.find((c) => c.index === index);
}

function clusterOf(c, id) {
  return c.clusters.find((k) => k.id === id);
}

// --- suspects and classes -------------------------------------------------------------------

function fillSuspects() {
  const a = state.audit;
  const list = $("suspects");
  list.replaceChildren();
  const items = [];
  for (const c of a.classes) for (const k of c.clusters) if (k.suspect) items.push([c, k]);
  // the audit's own ranking (audit.json "suspects"), as the report shows it; the cluster's suspicion breaks ties
  const rank = new Map((a.suspects || []).map((s, i) => [`${s.class}/${s.cluster}`, i]));
  const at = ([c, k]) => rank.get(`${c.name}/${k.id}`) ?? rank.size;
  items.sort((x, y) => (at(x) - at(y)) || (y[1].suspicion - x[1].suspicion));
  const nConf = items.filter(([, k]) => k.confirmed).length;
  // confirmed shortcuts first: an unconfirmed suspect (often the object) never reads as a found shortcut
  $("suspects-title").textContent = items.length
    ? `Shortcuts confirmed by intervention: ${nConf}; unconfirmed suspects: ${items.length - nConf}`
    : "Suspects: none";
  if (state.audit.headline) list.appendChild(el("li", { class: "none headline" }, state.audit.headline));
  if (!items.length) {
    list.appendChild(el("li", { class: "none" }, "No cluster concentrates on a small region that the class's other clusters do not use, no class on a small region that the other classes do not use, and no region a class's images agree on carries the class when pasted into other classes' images."));
  }
  for (const [c, k] of items) {
    const li = el("li");
    const b = el("button", { type: "button", class: "suspect-item", "data-class": c.index, "data-cluster": k.id });
    const head = el("span", { class: "suspect-head" });
    head.appendChild(el("span", { class: "swatch" })).style.background = color(k.id);
    head.appendChild(el("b", {}, `class ${c.name} · cluster ${k.id}`));
    head.appendChild(el("span", { class: "score" }, `suspicion ${fmt(k.suspicion)}`));
    const iv = k.intervention;
    const verdict = !iv ? "" : !iv.applied ? "not tested" : k.confirmed ? "confirmed" : "unconfirmed";
    if (verdict) head.appendChild(el("span", { class: `badge verdict ${verdict.replace(" ", "-")}` }, verdict));
    b.appendChild(head);
    b.appendChild(el("span", { class: "reading" }, k.reading));
    if (k.evidence) b.appendChild(el("span", { class: "reading evidence" }, k.evidence));
    b.addEventListener("click", () => { selectClass(c.index); selectCluster(k.id, true); });
    li.appendChild(b);
    if (iv && iv.applied && iv.examples && iv.examples.length) {
      const img = el("img", { class: "intervention", alt: `class ${c.name}, cluster ${k.id}: before and after the intervention (suspect image, region removed, another class, region pasted)` });
      const msg = el("span", { class: "reading" });
      li.appendChild(img);
      li.appendChild(msg);
      loadPng(`/api/audit/intervention/${c.index}/${k.id}.png`, img, msg, () => true);
    }
    list.appendChild(li);
  }
}

function fillClasses() {
  const box = $("classes");
  box.replaceChildren();
  for (const c of state.audit.classes) {
    const sus = c.clusters.filter((k) => k.suspect).length;
    const b = el("button", { type: "button", role: "tab", id: `class-${c.index}`, "aria-selected": "false",
      title: c.note || `${c.n} images, ${c.k} clusters` });
    b.appendChild(el("span", { class: "name" }, c.name));
    b.appendChild(el("span", { class: "meta" }, c.clusters.length ? `${c.n} · k ${c.k}` : `${c.n} · –`));
    if (sus) b.appendChild(el("span", { class: "badge" }, `${sus} suspect`));
    b.addEventListener("click", () => selectClass(c.index));
    box.appendChild(b);
  }
}

// --- one class: embedding, clusters, detail --------------------------------------------------

function selectClass(index) {
  const c = classOf(index);
  if (!c) return;
  state.cls = c;
  state.cluster = null;
  state.pinned = null;
  document.querySelectorAll("#classes button").forEach((b) => b.setAttribute("aria-selected", String(b.id === `class-${index}`)));
  const sus = c.clusters.filter((k) => k.suspect).length;
  $("class-title").textContent = `Class ${c.name}: ${c.n} images` +
    (c.clusters.length ? `, ${c.k} cluster${c.k === 1 ? "" : "s"}` : "") + (sus ? `, ${sus} suspect` : "");
  const how = c.k_source === "eigengap" ? `k = ${c.k} where the largest eigengap lies.` :
    c.k_source === "given" ? `k = ${c.k} as given.` : "";
  $("class-note").textContent = [how, c.note].filter(Boolean).join(" ");
  drawEmbedding(c);
  drawClusters(c);
  clearDetail();
}

function drawEmbedding(c) {
  const box = $("embedding");
  box.replaceChildren();
  const W = 520, H = 400, pad = 18;
  box.setAttribute("viewBox", `0 0 ${W} ${H}`);
  box.classList.remove("strips");
  const e = c.embedding;
  document.querySelector(".class-grid").hidden = !c.clusters.length;
  if (!c.clusters.length) return;
  if (!e || !e.members.length) {
    drawStrips(c);
    return;
  }
  const xs = e.xy.map((p) => p[0]), ys = e.xy.map((p) => p[1]);
  const x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(...ys), y1 = Math.max(...ys);
  const sx = (W - 2 * pad) / Math.max(1e-9, x1 - x0), sy = (H - 2 * pad) / Math.max(1e-9, y1 - y0);
  const s = Math.min(sx, sy);
  const ox = (W - s * (x1 - x0)) / 2, oy = (H - s * (y1 - y0)) / 2;
  const suspect = new Set(c.clusters.filter((k) => k.suspect).map((k) => k.id));
  const method = (state.audit.settings.embedding || "").toUpperCase();
  $("embedding-note").textContent = `${method} of the ${e.members.length} maps: each point an image, coloured by cluster` +
    (suspect.size ? "; suspect clusters drawn as diamonds with a dark red edge." : ".");
  // points of suspect clusters last, so they are on top
  const order = e.members.map((_, j) => j).sort((a, b) => suspect.has(e.cluster[a]) - suspect.has(e.cluster[b]));
  for (const j of order) {
    const x = ox + s * (e.xy[j][0] - x0), y = H - (oy + s * (e.xy[j][1] - y0));
    box.appendChild(point(e.members[j], e.cluster[j], x, y, suspect.has(e.cluster[j])));
  }
}

// One image as a point: a circle, or a diamond for a suspect cluster; hover shows it, click pins it.
function point(idx, k, x, y, sus) {
  const common = { class: "pt" + (sus ? " sus" : ""), "data-index": idx, "data-cluster": k, fill: color(k), tabindex: "0" };
  const p = sus
    ? svg("path", { ...common, d: `M${x} ${y - 6}L${x + 6} ${y}L${x} ${y + 6}L${x - 6} ${y}Z` })
    : svg("circle", { ...common, cx: x.toFixed(1), cy: y.toFixed(1), r: 4.5 });
  p.appendChild(svg("title")).textContent = `image ${idx} · cluster ${k}`;
  p.addEventListener("mouseenter", () => hoverPoint(idx));
  p.addEventListener("mouseleave", () => clearTimeout(state.hoverTimer));
  p.addEventListener("click", () => pinPoint(idx));
  p.addEventListener("keydown", (ev) => { if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); pinPoint(idx); } });
  return p;
}

// Without an embedding (embedding=none): each cluster's images as a block of points, one block per row.
function drawStrips(c) {
  const box = $("embedding");
  const W = 520, left = 78, step = 14, per = Math.floor((W - left - 10) / step);
  let y = 16;
  for (const k of c.clusters) {
    const label = svg("text", { x: 8, y: y + 4, class: "strip-label" });
    label.textContent = `cluster ${k.id}`;
    box.appendChild(label);
    k.members.forEach((idx, j) => {
      box.appendChild(point(idx, k.id, left + step * (j % per), y + step * Math.floor(j / per), k.suspect));
    });
    y += step * Math.ceil(k.members.length / per) + 12;
  }
  box.setAttribute("viewBox", `0 0 ${W} ${y}`);
  box.classList.add("strips");
  $("embedding-note").textContent = "No embedding in this audit (embedding=none): each point an image, in rows by cluster.";
}

function drawClusters(c) {
  const box = $("clusters");
  box.querySelectorAll("img").forEach((i) => { if (i.src.startsWith("blob:")) URL.revokeObjectURL(i.src); });
  box.replaceChildren();
  if (!c.clusters.length) {
    box.appendChild(el("p", { class: "hint" }, "No clusters in this class."));
    return;
  }
  const maps = state.audit.view.maps;
  const order = [...c.clusters].sort((a, b) => (b.suspect - a.suspect) || (a.suspect ? b.suspicion - a.suspicion : a.id - b.id));
  for (const k of order) {
    const card = el("button", { type: "button", class: "card" + (k.suspect ? " suspect" : ""), id: `cluster-${k.id}`,
      "aria-pressed": "false" });
    const fig = el("div", { class: "mean" });
    const img = el("img", { alt: `cluster ${k.id} mean map`, hidden: "" });
    const msg = el("span", { class: "hint" }, maps ? "loading…" : "no maps");
    fig.appendChild(img);
    fig.appendChild(msg);
    card.appendChild(fig);
    const body = el("div", { class: "card-body" });
    const head = el("div", { class: "card-head" });
    head.appendChild(el("span", { class: "swatch" })).style.background = color(k.id);
    head.appendChild(el("b", {}, `cluster ${k.id}`));
    head.appendChild(el("span", {}, `${k.size} images (${Math.round(100 * k.share_of_class)}%)`));
    if (k.suspect) head.appendChild(el("span", { class: "badge" }, "suspect"));
    body.appendChild(head);
    body.appendChild(el("div", { class: "sus-line" }, `suspicion ${fmt(k.suspicion)}`));
    const bar = el("div", { class: "bar", title: `suspicion ${fmt(k.suspicion)}` });
    const fill = el("span");
    fill.style.width = `${(100 * Math.min(1, Math.max(0, k.suspicion))).toFixed(0)}%`;
    bar.appendChild(fill);
    body.appendChild(bar);
    const dl = el("dl", { class: "scores small", title: "suspicion = concentration × consistency × exclusivity" });
    for (const name of ["concentration", "consistency", "exclusivity"]) {
      dl.appendChild(el("dt", {}, name));
      dl.appendChild(el("dd", {}, fmt(k[name])));
    }
    body.appendChild(dl);
    body.appendChild(el("div", { class: "reading" }, k.reading));
    if (k.evidence) body.appendChild(el("div", { class: "reading evidence" }, k.evidence));
    card.appendChild(body);
    card.addEventListener("click", () => selectCluster(state.cluster === k.id ? null : k.id, true));
    card.addEventListener("mouseenter", () => highlight(k.id));
    card.addEventListener("mouseleave", () => highlight(state.cluster));
    box.appendChild(card);
    if (maps) {
      const cls = c.index;
      loadPng(`/api/audit/cluster/${cls}/${k.id}.png`, img, msg, () => state.cls && state.cls.index === cls);
    }
  }
}

function highlight(id) {
  const box = $("embedding");
  box.classList.toggle("focus", id !== null && id !== undefined);
  box.querySelectorAll(".pt").forEach((p) => p.classList.toggle("on", Number(p.dataset.cluster) === id));
}

function selectCluster(id, showPrototype) {
  state.cluster = id;
  document.querySelectorAll("#clusters .card").forEach((b) => b.setAttribute("aria-pressed", String(b.id === `cluster-${id}`)));
  highlight(id);
  if (id === null) return;
  const card = $(`cluster-${id}`);
  if (card) card.scrollIntoView({ block: "nearest" });
  const k = clusterOf(state.cls, id);
  if (showPrototype && k) pinPoint((k.prototypes && k.prototypes.length ? k.prototypes : k.members)[0]);
}

function hoverPoint(index) {
  clearTimeout(state.hoverTimer);
  state.hoverTimer = setTimeout(() => showDetail(index), 90);  // not every point the mouse crosses
}

function pinPoint(index) {
  clearTimeout(state.hoverTimer);
  state.pinned = index;
  $("embedding").querySelectorAll(".pt").forEach((p) => p.classList.toggle("pinned", Number(p.dataset.index) === index));
  showDetail(index);
}

// the previous or next image of the shown image's cluster (points of a tight cluster overlap)
function step(by) {
  if (state.shown === null) return;
  const [k, j] = memberOf(state.cls, state.shown);
  if (!k) return;
  pinPoint(k.members[(j + by + k.members.length) % k.members.length]);
}

function clearDetail() {
  state.shown = null;
  $("detail-nav").hidden = true;
  const d = $("detail");
  d.dataset.index = "";
  $("detail-img").hidden = true;
  $("detail-msg").textContent = "Hover over or click a point to see its image and map.";
  for (const id of ["detail-title", "detail-path", "detail-reading"]) $(id).textContent = "";
  $("detail-scores").replaceChildren();
}

function memberOf(c, index) {
  for (const k of c.clusters) {
    const j = k.members.indexOf(index);
    if (j >= 0) return [k, j];
  }
  return [null, -1];
}

async function showDetail(index) {
  const c = state.cls;
  const [k, j] = memberOf(c, index);
  if (!k) return;
  state.shown = index;
  const d = $("detail");
  d.dataset.index = "";
  d.classList.toggle("is-suspect", !!k.suspect);
  $("detail-title").textContent = `image ${index} · class ${c.name} · cluster ${k.id}` + (k.suspect ? " · suspect" : "");
  $("detail-title").style.borderColor = color(k.id);
  $("detail-path").textContent = k.paths ? k.paths[j] : `${state.audit.data.kind || "data set"} index ${index}`;
  $("detail-reading").textContent = k.reading;
  $("detail-nav").hidden = k.members.length < 2;
  $("detail-pos").textContent = `${j + 1} of ${k.members.length} in cluster ${k.id}`;
  const dl = $("detail-scores");
  dl.replaceChildren();
  const rows = [["suspicion", fmt(k.suspicion)], ["concentration", fmt(k.concentration)],
    ["consistency", fmt(k.consistency)], ["exclusivity", fmt(k.exclusivity)],
    ["mean p(class)", fmt(k.mean_probability)], ["predicted as class", `${Math.round(100 * k.predicted_share)}%`]];
  for (const [name, v] of rows) {
    dl.appendChild(el("dt", {}, name));
    dl.appendChild(el("dd", {}, v));
  }
  $("detail-msg").textContent = "loading…";
  const ok = await loadPng(`/api/audit/item/${index}.png`, $("detail-img"), $("detail-msg"), () => state.shown === index);
  if (ok) d.dataset.index = String(index);
}

// --- start ------------------------------------------------------------------------------------

async function init() {
  let r;
  try {
    r = await fetch("/api/audit");
  } catch (e) {
    showError("Cannot reach the convscope server.");
    return;
  }
  let body = null;
  try { body = await r.json(); } catch (_) { body = null; }
  if (!r.ok) {
    showError((body && body.error) || `cannot load the audit (${r.status})`);
    document.querySelector("main").hidden = true;
    document.body.dataset.ready = "1";
    return;
  }
  const a = body;
  state.audit = a;
  const n = a.classes.reduce((s, c) => s + c.n, 0);
  const nk = a.classes.reduce((s, c) => s + c.clusters.length, 0);
  const model = (a.model && a.model.model) || "the model";
  $("summary").textContent = `${model} · ${a.method}${a.layer ? ` at ${a.layer}` : ""} · ${n} images in ` +
    `${a.classes.length} classes · ${nk} clusters · ${a.suspects.length} suspect`;
  document.title = `convscope audit: ${model}`;
  const notes = [a.view.images_note, a.view.maps_note].filter(Boolean);
  $("view-notes").textContent = notes.map((s) => s[0].toUpperCase() + s.slice(1) + ".").join(" ");
  $("view-notes").hidden = !notes.length;
  fillSuspects();
  fillClasses();
  $("prev").addEventListener("click", () => step(-1));
  $("next").addEventListener("click", () => step(1));
  document.addEventListener("keydown", (ev) => {  // ← → step through the shown image's cluster
    if (ev.target.closest && ev.target.closest("input, select, textarea")) return;
    if (ev.key === "ArrowLeft") step(-1);
    else if (ev.key === "ArrowRight") step(1);
  });
  // start on the class of the most suspicious cluster, or the first class that was clustered
  const top = a.suspects.length ? a.classes.find((c) => c.name === a.suspects[0].class) : null;
  const first = top || a.classes.find((c) => c.clusters.length) || a.classes[0];
  if (first) selectClass(first.index);
  document.body.dataset.ready = "1";
}

document.addEventListener("DOMContentLoaded", init);
