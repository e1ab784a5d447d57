// The explorer page: the controls, the panels and the view state, which lives in the URL's hash
// (graph, threshold, errors, selection, pins, supernodes, labels) and is saved into the graph on request.

import { get, post } from "./api.js";
import { GraphCanvas } from "./graph.js";
import { drawSubgraph } from "./subgraph.js";

const $ = (id) => document.getElementById(id);
const el = (tag, text, cls) => {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text;
  if (cls) e.className = cls;
  return e;
};

const state = {
  graph: null,
  threshold: 0.8,
  edgeThreshold: 0.98,
  errors: true,
  selected: null,
  pins: [],
  supernodes: [],
  labels: {},
  ticked: new Set(),
};
let view = null;
let subgraphResult = null;
let graphList = [];
const timings = {};
window.clew = {
  state,
  timings,
  get view() {
    return view;
  },
  // where a node is drawn, in the canvas's CSS pixels (for tests and the benchmark)
  where(key) {
    const i = canvas.keyIndex ? canvas.keyIndex.get(key) : undefined;
    return i === undefined ? null : { x: canvas.x[i], y: canvas.y[i] };
  },
  get clickDraw() {
    return canvas.clickDraw;
  },
  get stages() {
    return canvas.stages;
  },
  get canvas() {
    return canvas;
  },
};

function setStatus(text, error = false) {
  const s = $("status");
  s.textContent = text;
  s.classList.toggle("error", error);
}

// ---- the URL ---------------------------------------------------------------------------------------

function readHash() {
  const h = new URLSearchParams(location.hash.slice(1));
  const json = (name, fallback) => {
    try {
      return h.has(name) ? JSON.parse(h.get(name)) : fallback;
    } catch {
      return fallback;
    }
  };
  return {
    graph: h.get("g"),
    threshold: h.has("t") ? Number(h.get("t")) : null,
    edgeThreshold: h.has("et") ? Number(h.get("et")) : null,
    errors: h.has("e") ? h.get("e") !== "0" : null,
    selected: h.get("sel"),
    pins: json("pins", null),
    supernodes: json("sn", null),
    labels: json("lb", null),
  };
}

function writeHash() {
  const h = new URLSearchParams();
  h.set("g", state.graph);
  h.set("t", state.threshold.toFixed(2));
  h.set("e", state.errors ? "1" : "0");
  if (state.edgeThreshold !== 0.98) h.set("et", String(state.edgeThreshold));
  if (state.selected) h.set("sel", state.selected);
  if (state.pins.length) h.set("pins", JSON.stringify(state.pins));
  if (state.supernodes.length) h.set("sn", JSON.stringify(state.supernodes));
  if (Object.keys(state.labels).length) h.set("lb", JSON.stringify(state.labels));
  history.replaceState(null, "", `#${h.toString()}`);
}

// ---- loading -----------------------------------------------------------------------------------------

const canvas = new GraphCanvas($("graph"), $("tooltip"), {
  select: (key) => select(key, false),
  pin: (key) => pin(key),
});

async function fetchView(ready = null) {
  const extra = [...state.pins, ...state.supernodes.flatMap((s) => s.members)];
  setStatus("computing the view…");
  view =
    ready && !extra.length && ready.threshold === state.threshold && ready.edge_threshold === state.edgeThreshold
      ? ready
      : await get("/api/view", {
          graph: state.graph,
          threshold: state.threshold,
          edge_threshold: state.edgeThreshold,
          extra: extra.join(","),
        });
  canvas.labels = state.labels;
  canvas.supernodes = state.supernodes;
  canvas.showErrors = state.errors;
  canvas.setData(view);
  if (timings.firstDraw === undefined) timings.firstDraw = performance.now();
  canvas.select(state.selected);
  const c = view.counts;
  $("counts").textContent =
    `${c.kept_nodes} of ${c.all_nodes} nodes, ${c.edges} of ${c.all_edges} edges` +
    (c.edges < c.kept_edges ? ` (strongest ${c.edges} of ${c.kept_edges} kept)` : "");
  $("prompt").textContent = view.prompt;
  fillOthers();
  $("save").disabled = !view.writable;
  $("run-test").disabled = !view.can_intervene;
  $("run-test").title = view.can_intervene ? "" : "no model for this graph (start the server with clew serve)";
  $("save").title = view.writable ? "save the view into the graph file" : "a viewer JSON graph is read-only";
  setStatus("");
  document.body.dataset.graph = state.graph;
  document.body.dataset.ready = "1";
}

async function openGraph(name, fromHash) {
  document.body.dataset.ready = "0";
  state.graph = name;
  $("graph-select").value = name;
  const h = fromHash ? readHash() : {};
  state.selected = h.selected || null;
  state.ticked = new Set();
  // first the annotations saved in the graph, then what the URL says over them
  const first = await get("/api/view", {
    graph: name,
    threshold: h.threshold || 0.8,
    edge_threshold: h.edgeThreshold || 0.98,
  });
  const a = first.annotations || {};
  const saved = a.view || {};
  state.threshold = h.threshold ?? saved.threshold ?? 0.8;
  state.edgeThreshold = h.edgeThreshold ?? saved.edge_threshold ?? 0.98;
  state.errors = h.errors ?? saved.errors ?? true;
  state.pins = h.pins ?? a.pins ?? [];
  state.supernodes = h.supernodes ?? a.supernodes ?? [];
  state.labels = h.labels ?? a.labels ?? {};
  if (!h.selected && saved.selected) state.selected = saved.selected;
  $("threshold").value = state.threshold;
  $("threshold-value").textContent = Number(state.threshold).toFixed(2);
  $("show-errors").checked = state.errors;
  await fetchView(first);
  writeHash();
  renderPins();
  await refreshSubgraph();
  if (state.selected) await select(state.selected, true);
  else renderNode(null);
}

// ---- the selected node ---------------------------------------------------------------------------------

async function select(key, redraw = true) {
  state.selected = key;
  if (redraw) canvas.select(key);
  writeHash();
  if (!key) return renderNode(null);
  try {
    renderNode(await get("/api/node", { graph: state.graph, key }));
  } catch (err) {
    setStatus(err.message, true);
  }
}

function edgeList(title, items) {
  const box = el("div", undefined, "edges");
  box.append(el("h3", title));
  if (!items.length) box.append(el("div", "none", "muted"));
  for (const item of items) {
    const row = el("div", undefined, "edge");
    const w = el("span", item.weight.toFixed(3), item.weight > 0 ? "pos" : "neg");
    const name = el("a", `${item.label || item.key}`);
    name.href = "#";
    name.title = item.key;
    name.dataset.key = item.key;
    name.addEventListener("click", (e) => {
      e.preventDefault();
      select(item.key);
    });
    row.append(w, name);
    box.append(row);
  }
  return box;
}

function renderNode(node) {
  const panel = $("node-panel");
  panel.replaceChildren(el("h2", "Node"));
  const card = $("feature-panel");
  card.replaceChildren();
  if (!node) {
    panel.append(el("div", "click a node; double-click pins it", "muted"));
    return;
  }
  panel.dataset.key = node.key;
  const head = el("div", undefined, "node-head");
  head.append(el("strong", node.key), el("span", ` ${node.kind}, position ${node.pos} ${JSON.stringify(node.token)}`));
  if (node.activation !== undefined) head.append(el("span", ` · activation ${node.activation}`));
  panel.append(head);
  const label = el("input");
  label.id = "label-input";
  label.placeholder = "label";
  label.value = state.labels[node.key] ?? node.label ?? "";
  label.addEventListener("change", () => setLabel(node.key, label.value));
  const pinButton = el("button", state.pins.includes(node.key) ? "Unpin" : "Pin");
  pinButton.id = "pin-button";
  pinButton.addEventListener("click", () => (state.pins.includes(node.key) ? unpin(node.key) : pin(node.key)));
  const row = el("div", undefined, "row");
  row.append(label, pinButton);
  panel.append(row);
  const cols = el("div", undefined, "cols");
  const ins = el("div");
  ins.append(edgeList("inputs +", node.inputs.positive), edgeList("inputs −", node.inputs.negative));
  const outs = el("div");
  outs.append(edgeList("outputs +", node.outputs.positive), edgeList("outputs −", node.outputs.negative));
  cols.append(ins, outs);
  panel.append(cols);
  if (node.card) renderCard(node, node.card);
}

function renderCard(node, c) {
  const card = $("feature-panel");
  card.append(el("h2", `Feature L${node.layer}/F${node.feature}`));
  card.append(el("div", c.label || "(no label)", "card-label"));
  card.append(
    el("div", `activation here ${node.activation} · max ${c.act_max} · mean ${c.mean} · frequency ${(100 * c.frequency).toPrecision(2)}%`, "muted"),
  );
  const logits = el("div", undefined, "cols");
  for (const [title, list] of [["raises", c.top_logits], ["lowers", c.bottom_logits]]) {
    const box = el("div");
    box.append(el("h3", title));
    for (const [tok, v] of list) box.append(el("div", `${JSON.stringify(tok)} ${v.toFixed(3)}`, "mono"));
    logits.append(box);
  }
  card.append(logits);
  // the histogram of activations
  const hist = el("canvas");
  hist.width = 280;
  hist.height = 50;
  const ctx = hist.getContext("2d");
  const max = Math.max(1, ...c.histogram);
  const bw = hist.width / c.histogram.length;
  ctx.fillStyle = "#e0912b";
  c.histogram.forEach((v, i) => {
    const h = (v / max) * (hist.height - 2);
    ctx.fillRect(i * bw, hist.height - h, bw - 1, h);
  });
  card.append(el("h3", "activations"), hist);
  card.append(el("h3", "top examples"));
  for (const ex of c.examples) {
    const line = el("div", undefined, "example");
    const top = Math.max(1e-9, ...ex.acts);
    ex.tokens.forEach((t, i) => {
      const span = el("span", t);
      if (ex.acts[i] > 0) span.style.background = `rgba(224,145,43,${Math.min(1, ex.acts[i] / top).toFixed(2)})`;
      if (i === ex.peak) span.className = "peak";
      span.title = String(ex.acts[i]);
      line.append(span);
    });
    card.append(line);
  }
}

function setLabel(key, text) {
  if (text.trim()) state.labels[key] = text.trim();
  else delete state.labels[key];
  canvas.labels = state.labels;
  canvas.draw();
  writeHash();
  renderPins();
}

// ---- pins, supernodes and the subgraph --------------------------------------------------------------

async function pin(key) {
  if (!state.pins.includes(key)) state.pins.push(key);
  await afterPins(key);
}

async function unpin(key) {
  state.pins = state.pins.filter((k) => k !== key);
  state.ticked.delete(key);
  await afterPins(key);
}

async function afterPins(key) {
  writeHash();
  renderPins();
  if (state.selected === key) renderPinButton(key);
  await refreshSubgraph();
}

function renderPinButton(key) {
  const b = $("pin-button");
  if (b) b.textContent = state.pins.includes(key) ? "Unpin" : "Pin";
}

function nameOf(key) {
  const i = canvas.keyIndex ? canvas.keyIndex.get(key) : undefined;
  return state.labels[key] ?? (i !== undefined ? view.nodes.label[i] : "") ?? "";
}

function renderPins() {
  const list = $("pins");
  list.replaceChildren();
  const grouped = new Set(state.supernodes.flatMap((s) => s.members));
  state.supernodes.forEach((s, idx) => {
    const row = el("div", undefined, "pin supernode");
    row.dataset.name = s.name;
    const tick = el("input");
    tick.type = "checkbox";
    tick.checked = state.ticked.has(`sn:${idx}`);
    tick.addEventListener("change", () => toggleTick(`sn:${idx}`, tick.checked));
    const name = el("input");
    name.value = s.name;
    name.className = "rename";
    const why = typeof s.why === "string" ? s.why : Object.values(s.why || {}).slice(0, 5).join("; ");
    const examples = (s.examples || []).map((e) => "e.g. " + e).join("\n");
    name.title = `${s.members.length} members: ${s.members.join(", ")}${why ? "\n" + why : ""}` +
      (examples ? "\n" + examples : "");
    name.addEventListener("change", () => rename(idx, name.value));
    const ungroup = el("button", "ungroup");
    ungroup.addEventListener("click", () => {
      state.supernodes.splice(idx, 1);
      clearSupernodeTicks();
      afterGroups();
    });
    row.append(tick, name, el("span", ` ${s.members.length} · ${s.source || "user"}`, "muted"), ungroup);
    list.append(row);
  });
  for (const key of state.pins) {
    if (grouped.has(key)) continue;
    const row = el("div", undefined, "pin");
    row.dataset.key = key;
    const tick = el("input");
    tick.type = "checkbox";
    tick.checked = state.ticked.has(key);
    tick.addEventListener("change", () => toggleTick(key, tick.checked));
    const name = el("a", `${key} ${nameOf(key)}`);
    name.href = "#";
    name.addEventListener("click", (e) => {
      e.preventDefault();
      select(key);
    });
    const x = el("button", "×");
    x.title = "unpin";
    x.addEventListener("click", () => unpin(key));
    row.append(tick, name, x);
    list.append(row);
  }
}

function clearSupernodeTicks() {
  for (const id of [...state.ticked]) if (id.startsWith("sn:")) state.ticked.delete(id);
}

function toggleTick(id, on) {
  if (on) state.ticked.add(id);
  else state.ticked.delete(id);
}

function tickedMembers() {
  const keys = [];
  for (const id of state.ticked) {
    if (id.startsWith("sn:")) {
      const s = state.supernodes[Number(id.slice(3))];
      if (s) keys.push(...s.members);
    } else keys.push(id);
  }
  return [...new Set(keys)];
}

function group() {
  const members = tickedMembers();
  if (members.length < 2) return setStatus("tick two or more pins to group them", true);
  state.supernodes = state.supernodes.filter((s, i) => !state.ticked.has(`sn:${i}`));
  let n = state.supernodes.length + 1;
  while (state.supernodes.some((s) => s.name === `group ${n}`)) n++;
  state.supernodes.push({ name: `group ${n}`, members, why: "", source: "user" });
  for (const m of members) if (!state.pins.includes(m)) state.pins.push(m);
  state.ticked = new Set();
  afterGroups();
}

function rename(idx, name) {
  name = name.trim();
  if (!name || state.supernodes.some((s, i) => i !== idx && s.name === name)) {
    setStatus(`a supernode needs a name of its own`, true);
    return renderPins();
  }
  state.supernodes[idx] = { ...state.supernodes[idx], name, source: "user" };
  afterGroups();
}

function afterGroups() {
  canvas.supernodes = state.supernodes;
  canvas.draw();
  writeHash();
  renderPins();
  refreshSubgraph();
}

async function refreshSubgraph() {
  try {
    subgraphResult = await post("/api/subgraph", {
      graph: state.graph,
      pins: state.pins,
      supernodes: state.supernodes,
    });
  } catch (err) {
    subgraphResult = null;
    setStatus(err.message, true);
  }
  const s = subgraphResult;
  $("scores").textContent =
    s && s.replacement !== null
      ? `replacement ${s.replacement.toFixed(3)} · completeness ${s.completeness.toFixed(3)}`
      : "no subgraph yet";
  $("scores").dataset.replacement = s && s.replacement !== null ? String(s.replacement) : "";
  drawSubgraph($("subgraph"), s, view.tokens.length, view.n_layers);
}

// ---- interventions -------------------------------------------------------------------------------------

// the graphs a swap can take its features from: the folder's other clew graphs
function fillOthers() {
  const select = $("test-other");
  const kept = select.value;
  select.replaceChildren();
  for (const g of graphList) {
    if (g.kind !== "safetensors" || g.name === state.graph) continue;
    const o = el("option", g.name);
    o.value = g.name;
    select.append(o);
  }
  if ([...select.options].some((o) => o.value === kept)) select.value = kept;
}

function showOpControls() {
  const op = $("test-op").value;
  $("test-value").hidden = op !== "scale";
  $("test-other").hidden = op !== "swap";
}

function showSwap(out, r, nodes) {
  const fmt = (list) => list.map((t) => `${JSON.stringify(t.token)} ${t.p.toFixed(3)}`).join(", ");
  out.append(
    el("div", `swapped with ${r.other} (${JSON.stringify(r.span[0].join(""))} → ${JSON.stringify(r.span[1].join(""))}): ` +
      `${r.n_out} features out (${nodes.join(", ")}), ${r.n_in} specific features of the other prompt in` +
      (r.left_out ? ` (${r.left_out} more at positions with no counterpart here left out)` : ""), "muted"),
  );
  const box = el("div", undefined, "mode");
  box.dataset.mode = "free";
  box.dataset.top = r.modes.free.after[0].token;
  box.append(
    el("h3", "free"),
    el("div", `before: ${fmt(r.modes.free.before)}`, "mono"),
    el("div", `after: ${fmt(r.modes.free.after)}`, "mono"),
    el("div", `control: ${fmt(r.control.after)}`, "mono"),
  );
  out.append(box);
  const table = el("table");
  const head = el("tr");
  for (const h of ["answer", "before", "swapped", "control"]) head.append(el("th", h));
  table.append(head);
  for (const a of r.answers) {
    const row = el("tr");
    row.append(el("td", JSON.stringify(a.label)));
    for (const v of [a.before, a.after, a.control]) row.append(el("td", v.toFixed(3)));
    table.append(row);
  }
  out.append(
    el("h3", "p(this answer), p(the other's)"),
    table,
    el("div", `control: ${r.control_n[0]} matched random features out, ${r.control_n[1]} in`, "muted"),
  );
  out.dataset.top = r.modes.free.after[0].token;
}

async function runTest() {
  const nodes = tickedMembers();
  const out = $("test-result");
  out.replaceChildren();
  delete out.dataset.top;
  if (!nodes.length) return setStatus("tick pinned nodes or supernodes to test", true);
  const op = $("test-op").value;
  out.dataset.op = op;
  if (op === "swap" && !$("test-other").value) return setStatus("a swap needs another graph of the folder", true);
  setStatus(op === "swap" ? "running the swap…" : "running the intervention…");
  $("run-test").disabled = true;
  try {
    const body = { graph: state.graph, nodes, op, value: Number($("test-value").value) };
    if (op === "swap") body.other = $("test-other").value;
    const r = await post("/api/intervene", body);
    if (op === "swap") {
      showSwap(out, r, nodes);
      setStatus("");
      return;
    }
    out.append(el("div", `${op === "zero" ? "zeroed" : `scaled ×${r.value}`}: ${nodes.join(", ")}`, "muted"));
    for (const [mode, m] of Object.entries(r.modes)) {
      const fmt = (list) => list.map((t) => `${JSON.stringify(t.token)} ${t.p.toFixed(3)}`).join(", ");
      const box = el("div", undefined, "mode");
      box.dataset.mode = mode;
      box.dataset.top = m.after[0].token;
      box.append(el("h3", mode), el("div", `before: ${fmt(m.before)}`, "mono"), el("div", `after: ${fmt(m.after)}`, "mono"));
      out.append(box);
    }
    const table = el("table");
    const head = el("tr");
    const modes = Object.keys(r.modes);
    for (const h of ["target", "predicted", ...modes]) head.append(el("th", h));
    table.append(head);
    for (const t of r.targets) {
      const row = el("tr");
      row.append(el("td", JSON.stringify(t.label)), el("td", t.predicted.toFixed(3)));
      for (const m of modes) row.append(el("td", t[m] === null ? "–" : t[m].toFixed(3)));
      table.append(row);
    }
    out.append(el("h3", "change of each target (logit − mean logit)"), table);
    if (r.note) out.append(el("div", r.note, "muted"));
    out.dataset.top = (r.modes.free || r.modes.constrained).after[0].token;
    setStatus("");
  } catch (err) {
    setStatus(err.message, true);
  } finally {
    $("run-test").disabled = !view.can_intervene;
  }
}

// ---- saving ------------------------------------------------------------------------------------------

async function save() {
  const payload = {
    supernodes: state.supernodes,
    labels: state.labels,
    pins: state.pins,
    view: {
      threshold: Number(state.threshold),
      edge_threshold: Number(state.edgeThreshold),
      errors: state.errors,
      selected: state.selected,
    },
  };
  try {
    await post("/api/state", { graph: state.graph, state: payload });
    setStatus(`saved into ${state.graph}`);
    document.body.dataset.saved = String(Date.now());
  } catch (err) {
    setStatus(err.message, true);
  }
}

// ---- controls ----------------------------------------------------------------------------------------

$("threshold").addEventListener("input", (e) => ($("threshold-value").textContent = Number(e.target.value).toFixed(2)));
$("threshold").addEventListener("change", async (e) => {
  state.threshold = Number(e.target.value);
  document.body.dataset.ready = "0";
  await fetchView();
  writeHash();
});
$("show-errors").addEventListener("change", (e) => {
  state.errors = e.target.checked;
  canvas.setErrors(state.errors);
  writeHash();
});
$("search").addEventListener("input", (e) => canvas.setSearch(e.target.value));
$("search").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && canvas.matches && canvas.matches.length) select(canvas.matches[0]);
});
$("graph-select").addEventListener("change", (e) => {
  history.replaceState(null, "", `#g=${encodeURIComponent(e.target.value)}`);
  openGraph(e.target.value, false).catch((err) => setStatus(err.message, true));
});
$("save").addEventListener("click", save);
$("group").addEventListener("click", group);
$("run-test").addEventListener("click", runTest);
$("test-op").addEventListener("change", showOpControls);
showOpControls();

async function start() {
  const { graphs } = await get("/api/graphs");
  graphList = graphs;
  const select = $("graph-select");
  for (const g of graphs) {
    const o = el("option", g.name);
    o.value = g.name;
    select.append(o);
  }
  if (!graphs.length) return setStatus("no graphs in this folder", true);
  const wanted = readHash().graph;
  const name = graphs.some((g) => g.name === wanted) ? wanted : graphs[0].name;
  await openGraph(name, name === wanted);
}

start().catch((err) => setStatus(err.message, true));
