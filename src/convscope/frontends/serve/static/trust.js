// The "Which method to trust" page: starts an evaluation (POST /api/trust), polls its progress
// (GET /api/trust/{id}) and draws the table (no HTML from strings).
"use strict";
const $ = (id) => document.getElementById(id);

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function showError(msg) {
  $("error").textContent = msg || "";
  $("error").hidden = !msg;
}

const fmt = (v) => (v === null || v === undefined ? "n/a" : Number(v).toPrecision(3));

function drawTable(r) {
  const t = $("table");
  t.replaceChildren();
  const head = el("tr");
  ["metric", "family", "better"].concat(r.methods).forEach((h) => head.append(el("th", h)));
  t.append(head);
  for (const m of r.metrics) {
    const row = el("tr");
    row.append(el("td", m.name), el("td", m.family), el("td", m.higher_is_better ? "higher" : "lower"));
    for (const me of r.methods) {
      const c = r.cells[me][m.name];
      const td = el("td", c.mean === null ? "failed" : fmt(c.mean) + " [" + fmt(c.ci[0]) + ", " + fmt(c.ci[1]) + "]");
      if (c.rank !== null) {
        td.append(el("span", " #" + c.rank, "rank"));
        if (c.rank === 1) td.className = "best";
      }
      if (c.error) td.title = c.error;
      row.append(td);
    }
    t.append(row);
  }
  const fam = el("tr", null, "family-ranks");
  fam.append(el("td", "mean rank per family"), el("td", ""), el("td", ""));
  for (const me of r.methods) {
    fam.append(el("td", Object.keys(r.family_ranks).map((f) => f + " " + fmt(r.family_ranks[f][me])).join("; ")));
  }
  t.append(fam);
  $("best").replaceChildren(...Object.keys(r.best).map((f) => el("li", f + ": " + r.best[f])));
  $("caption").textContent = r.caption;
  $("picture").src = r.png;
  $("result").hidden = false;
}

async function poll(id) {
  for (;;) {
    const res = await fetch("/api/trust/" + encodeURIComponent(id));
    const s = await res.json();
    if (!res.ok) { showError(s.error); break; }
    $("progress").max = s.total;
    $("progress").value = s.done;
    $("progress-text").textContent = s.status + ": " + s.done + "/" + s.total + " cells" + (s.note ? " · " + s.note : "");
    if (s.status === "failed") { showError(s.error); break; }
    if (s.status === "done") {
      $("progress-text").textContent = "done: " + s.n_images + " images, " + s.seconds + " s";
      $("unreliable").hidden = !s.warnings.length;
      $("unreliable-why").textContent = s.warnings.join(" ");
      drawTable(s.result);
      break;
    }
    await new Promise((ok) => setTimeout(ok, 700));
  }
  $("run").disabled = false;
}

async function start(ev) {
  ev.preventDefault();
  showError("");
  $("result").hidden = true;
  const fd = new FormData($("trust-form"));
  $("run").disabled = true;
  const res = await fetch("/api/trust", { method: "POST", body: fd });
  const r = await res.json();
  if (!res.ok) { showError(r.error); $("run").disabled = false; return; }
  $("progress-box").hidden = false;
  $("progress").max = r.total;
  $("progress").value = 0;
  poll(r.id);
}

async function init() {
  const res = await fetch("/api/info");
  const info = await res.json();
  $("model").replaceChildren(...info.models.map((m) => { const o = el("option", m.name); o.value = m.name; return o; }));
  const q = new URLSearchParams(location.search);
  if (q.get("model")) $("model").value = q.get("model");
  // methods that do not apply to the model (attention methods on a CNN): named in grey, and the
  // Score button is off while the Methods field names one (the server refuses them too)
  const checkMethods = () => {
    const m = info.models.find((x) => x.name === $("model").value);
    const why = (m && m.inapplicable) || {};  // method -> reason (the registry's `requires`)
    const bad = Object.keys(why);
    const named = $("methods").value.split(",").map((s) => s.trim()).filter((s) => bad.includes(s));
    $("inapplicable").hidden = !bad.length;
    $("inapplicable").textContent = "Not for this model: " + bad.join(", ") +
      (bad.length ? " (" + why[bad[0]] + ")" : "");
    $("inapplicable").classList.toggle("error", named.length > 0);
    $("run").disabled = named.length > 0;
    $("run").title = named.length ? "remove " + named.join(", ") + " from Methods" : "";
  };
  $("model").addEventListener("change", checkMethods);
  $("methods").addEventListener("input", checkMethods);
  checkMethods();
  $("trust-form").addEventListener("submit", start);
}

init().catch((e) => showError(String(e)));
