// convscope web app: the method-options form, built from the registry's option specs.
// Loaded before app.js (both deferred, in order); uses its helpers ($, el, state) at call time.
"use strict";

// --- the method-options form, built from the registry's option specs (GET /api/info, /api/methods)
// what an option accepts and its default, in words (the tooltip of its row)
function specLabel(o) {
  const def = o.default === null ? "auto" : JSON.stringify(o.default);
  return `${o.accepts}; default ${def}`;
}

// One widget per option: read() gives the value to send, or undefined for the default; write(v)
// shows a value (from the URL). Numbers get min/max/step from the declared range, choices a
// select, booleans a checkbox; options only the Python API can pass (tensors, callables) none.
function optionWidget(o) {
  const t = new Set(o.types);
  const numeric = t.has("int") || t.has("float") || t.has("any");
  const row = el("div", { class: "opt", title: o.doc || o.accepts });
  const name = el("span", { class: "opt-name" }, o.name);
  row.appendChild(name);
  const num = () => {
    const n = el("input", { type: "number", id: `opt-${o.name}`, "aria-label": o.name });
    if (o.min !== null) n.min = String(o.min);
    if (o.max !== null) n.max = String(o.max);
    n.step = o.integer ? "1" : "any";
    n.placeholder = typeof o.default === "number" ? String(o.default) : "auto";
    return n;
  };
  const parseNum = (n) => (n.value === "" ? undefined : (o.integer ? parseInt(n.value, 10) : parseFloat(n.value)));
  let read, write;
  if (o.choices || (t.has("bool") && (t.has("str") || numeric))) {
    const sel = el("select", { id: `opt-${o.name}`, "aria-label": o.name });
    sel.appendChild(el("option", { value: "" }, `default (${o.default === null ? "auto" : o.default})`));
    const values = [...(t.has("bool") ? [false, true] : []), ...(o.choices || [])];
    for (const v of values) sel.appendChild(el("option", { value: JSON.stringify(v) }, String(v)));
    const n = numeric ? num() : null;
    if (n) { sel.appendChild(el("option", { value: "#" }, "a number…")); n.hidden = true; }
    sel.addEventListener("change", () => { if (n) n.hidden = sel.value !== "#"; });
    row.appendChild(sel);
    if (n) row.appendChild(n);
    read = () => (sel.value === "" ? undefined : sel.value === "#" ? parseNum(n) : JSON.parse(sel.value));
    write = (v) => {
      const key = JSON.stringify(v);
      if (v === undefined) sel.value = "";
      else if (typeof v === "number" && n) { sel.value = "#"; n.value = String(v); }
      else if ([...sel.options].some((x) => x.value === key)) sel.value = key;
      if (n) n.hidden = sel.value !== "#";
    };
  } else if (t.has("bool")) {
    const box = el("input", { type: "checkbox", id: `opt-${o.name}`, "aria-label": o.name });
    box.checked = o.default === true;
    row.appendChild(box);
    read = () => (box.checked === (o.default === true) ? undefined : box.checked);
    write = (v) => { box.checked = v === undefined ? o.default === true : Boolean(v); };
  } else if (numeric) {
    const n = num();
    row.appendChild(n);
    read = () => parseNum(n);
    write = (v) => { n.value = v === undefined ? "" : String(v); };
  } else if (t.has("str") || t.has("dict")) {
    const text = el("input", { type: "text", id: `opt-${o.name}`, "aria-label": o.name,
                               placeholder: t.has("dict") ? '{"name": value}' : String(o.default ?? "auto") });
    row.appendChild(text);
    read = () => {
      if (!text.value.trim()) return undefined;
      if (!t.has("dict")) return text.value.trim();
      try { return JSON.parse(text.value); } catch (_) { throw new Error(`option ${o.name}: not JSON: ${text.value}`); }
    };
    write = (v) => { text.value = v === undefined ? "" : (typeof v === "string" ? v : JSON.stringify(v)); };
  } else {
    return null;  // tensors, arrays, callables: the Python API only
  }
  const doc = (o.doc || "").replace(/:\w+:`~?([^`]+)`/g, "$1").replace(/``/g, "");
  const first = doc.split(/(?<=[.;])\s/)[0].replace(/[.;]$/, "");
  const range = numeric && !o.choices ? `${first ? " · " : ""}${o.accepts}` : "";
  row.title = `${doc}\nAccepts ${specLabel(o)}.`;
  row.appendChild(el("span", { class: "opt-doc" }, `${first}${range}`));
  return { name: o.name, row, read, write };
}

function buildOptions(m) {
  const box = $("options");
  box.replaceChildren();
  state.widgets = m.options.map(optionWidget).filter((w) => w);
  for (const w of state.widgets) box.appendChild(w.row);
  if (!state.widgets.length) box.appendChild(el("div", { class: "hint" }, "This method has no options."));
  $("options-count").textContent = state.widgets.length ? `(${state.widgets.length})` : "";
}

function readOptions() {
  const out = {};
  for (const w of state.widgets) {
    const v = w.read();
    if (v !== undefined && !(typeof v === "number" && Number.isNaN(v))) out[w.name] = v;
  }
  return out;
}

function writeOptions(opts) {
  for (const w of state.widgets) w.write(opts[w.name]);
}
