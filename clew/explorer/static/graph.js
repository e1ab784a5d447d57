// The link graph on a canvas: tokens as columns, layers as rows (embeddings at the bottom, logits at
// the top). Edges are drawn once into an offscreen layer; a click redraws that layer dimmed and the
// selected node's own edges on top, so a redraw costs one image copy and a few lines.

const KIND = ["feature", "error", "embedding", "logit"];
const FILL = ["#e0912b", "#9aa0a6", "#3f8f5a", "#6b4fbb"];
const POS = [43, 108, 176];
const NEG = [197, 48, 48];
const FIRST = 40000; // edges drawn before the first picture; the rest follow in batches of as many

export class GraphCanvas {
  constructor(canvas, tooltip, handlers) {
    this.canvas = canvas;
    this.tooltip = tooltip;
    this.handlers = handlers; // { select(key), pin(key) }
    this.view = null;
    this.selected = -1;
    this.search = "";
    this.showErrors = true;
    this.supernodes = [];
    this.labels = {};
    canvas.addEventListener("mousemove", (e) => this.hover(e));
    canvas.addEventListener("mouseleave", () => (this.tooltip.hidden = true));
    canvas.addEventListener("click", (e) => this.click(e));
    canvas.addEventListener("dblclick", (e) => {
      const n = this.hit(e);
      if (n >= 0) this.handlers.pin(this.view.nodes.key[n]);
    });
    new ResizeObserver(() => this.view && this.setData(this.view)).observe(canvas.parentElement);
  }

  // ---- data and layout ---------------------------------------------------------------------------

  setData(view) {
    this.view = view;
    const nodes = view.nodes;
    const n = nodes.key.length;
    this.keyIndex = new Map(nodes.key.map((k, i) => [k, i]));
    this.visible = new Uint8Array(n);
    for (let i = 0; i < n; i++) this.visible[i] = this.showErrors || nodes.kind[i] !== 1 ? 1 : 0;
    const t = [performance.now()];
    this.buildAdjacency();
    t.push(performance.now());
    this.layout();
    t.push(performance.now());
    this.drawEdgeLayer();
    t.push(performance.now());
    this.draw();
    t.push(performance.now());
    this.stages = { adjacency: t[1] - t[0], layout: t[2] - t[1], edges: t[3] - t[2], draw: t[4] - t[3] };
  }

  buildAdjacency() {
    // compressed lists of the edge numbers into and out of each node
    const { source, target } = this.view.edges;
    const n = this.view.nodes.key.length;
    const m = source.length;
    const inCount = new Uint32Array(n + 1);
    const outCount = new Uint32Array(n + 1);
    for (let e = 0; e < m; e++) {
      inCount[target[e] + 1]++;
      outCount[source[e] + 1]++;
    }
    for (let i = 0; i < n; i++) {
      inCount[i + 1] += inCount[i];
      outCount[i + 1] += outCount[i];
    }
    const inEdges = new Uint32Array(m);
    const outEdges = new Uint32Array(m);
    const inFill = inCount.slice(0, n);
    const outFill = outCount.slice(0, n);
    for (let e = 0; e < m; e++) {
      inEdges[inFill[target[e]]++] = e;
      outEdges[outFill[source[e]]++] = e;
    }
    this.adj = { inCount, outCount, inEdges, outEdges };
  }

  layout() {
    const { nodes, tokens, n_layers } = this.view;
    const ratio = window.devicePixelRatio || 1;
    const box = this.canvas.parentElement.getBoundingClientRect();
    const W = Math.max(300, box.width);
    const H = Math.max(240, box.height);
    this.canvas.width = Math.round(W * ratio);
    this.canvas.height = Math.round(H * ratio);
    this.canvas.style.width = `${W}px`;
    this.canvas.style.height = `${H}px`;
    this.ratio = ratio;
    this.W = W;
    this.H = H;
    const left = 46, right = 12, top = 26, bottom = 40;
    const P = tokens.length;
    const rows = n_layers + 2; // embeddings (-1) .. logits (n_layers)
    const rowH = (H - top - bottom) / rows;
    // the busiest cell of each position decides its column's width
    const cells = new Map();
    const n = nodes.key.length;
    for (let i = 0; i < n; i++) {
      if (!this.visible[i]) continue;
      const c = nodes.pos[i] * rows + (nodes.layer[i] + 1);
      if (!cells.has(c)) cells.set(c, []);
      cells.get(c).push(i);
    }
    const busiest = new Float64Array(P).fill(1);
    for (const [c, list] of cells) {
      const p = Math.floor(c / rows);
      busiest[p] = Math.max(busiest[p], list.length);
    }
    const weight = Array.from(busiest, (b) => Math.pow(b, 0.6));
    const total = weight.reduce((a, b) => a + b, 0);
    const colX = new Float64Array(P + 1);
    colX[0] = left;
    for (let p = 0; p < P; p++) colX[p + 1] = colX[p] + ((W - left - right) * weight[p]) / total;
    this.colX = colX;
    this.rowY = (layer) => H - bottom - (layer + 1.5) * rowH;
    this.rowH = rowH;
    this.top = top;
    const x = new Float32Array(n);
    const y = new Float32Array(n);
    let radius = 5;
    for (const [c, list] of cells) {
      const p = Math.floor(c / rows);
      const layer = (c % rows) - 1;
      list.sort((a, b) => nodes.influence[b] - nodes.influence[a]);
      const w = colX[p + 1] - colX[p];
      const perRow = Math.max(1, Math.min(list.length, Math.floor(w / 7)));
      const subRows = Math.ceil(list.length / perRow);
      const subH = Math.min(10, (rowH * 0.8) / subRows);
      radius = Math.min(radius, Math.max(1.5, Math.min(w / perRow, subH) * 0.42));
      list.forEach((i, k) => {
        const r = Math.floor(k / perRow);
        x[i] = colX[p] + ((k % perRow) + 0.5) * (w / perRow);
        y[i] = this.rowY(layer) + (r - (subRows - 1) / 2) * subH;
      });
    }
    this.x = x;
    this.y = y;
    this.radius = radius;
    // a grid of cells for hit tests
    this.grid = new Map();
    for (let i = 0; i < n; i++) {
      if (!this.visible[i]) continue;
      const g = `${Math.floor(x[i] / 16)},${Math.floor(y[i] / 16)}`;
      if (!this.grid.has(g)) this.grid.set(g, []);
      this.grid.get(g).push(i);
    }
  }

  // ---- drawing ------------------------------------------------------------------------------------

  edgeVisible(e) {
    const { source, target } = this.view.edges;
    return this.visible[source[e]] && this.visible[target[e]];
  }

  drawEdgeLayer() {
    // Edges are rasterised here, in JavaScript, into one image: a canvas's anti-aliased strokes cost
    // seconds for 100,000 lines without a GPU. Each pixel keeps how much light the positive and the
    // negative edges crossing it let through; the colour is mixed from both. The server sends the
    // strongest edges first: the first FIRST of them are drawn at once, the rest in the next frames.
    const layer = this.edgeLayer || (this.edgeLayer = document.createElement("canvas"));
    layer.width = this.canvas.width;
    layer.height = this.canvas.height;
    const { weight } = this.view.edges;
    const m = weight.length;
    let max = 1e-12;
    for (let e = 0; e < m; e++) max = Math.max(max, Math.abs(weight[e]));
    this.maxWeight = max;
    const size = layer.width * layer.height;
    this.through = [new Float32Array(size).fill(1), new Float32Array(size).fill(1)];
    const generation = (this.generation = (this.generation || 0) + 1);
    this.rasterise(0, Math.min(m, FIRST));
    this.composite();
    this.edgesDone = m <= FIRST;
    const more = (from) => {
      if (generation !== this.generation) return; // a newer view took over
      const to = Math.min(m, from + FIRST);
      this.rasterise(from, to);
      this.composite();
      this.draw();
      if (to < m) setTimeout(() => more(to), 0);
      else {
        this.edgesDone = true;
        this.canvas.dataset.edgesDoneAt = String(performance.now());
        this.canvas.dataset.edgesDone = "1";
      }
    };
    this.canvas.dataset.edgesDone = this.edgesDone ? "1" : "0";
    if (this.edgesDone) this.canvas.dataset.edgesDoneAt = String(performance.now());
    if (m > FIRST) setTimeout(() => more(FIRST), 0);
  }

  rasterise(from, to) {
    const { source, target, weight } = this.view.edges;
    const Wp = this.edgeLayer.width, Hp = this.edgeLayer.height;
    const scale = weight.length > 20000 ? 0.35 : 1;
    const ratio = this.ratio, max = this.maxWeight, X = this.x, Y = this.y;
    for (let e = from; e < to; e++) {
      if (!this.edgeVisible(e)) continue;
      const r = Math.abs(weight[e]) / max;
      const strength = r > 0.1 ? 3 : r > 0.01 ? 2 : r > 0.001 ? 1 : 0;
      const keep = 1 - (0.12 + 0.18 * strength) * scale;
      const t = this.through[weight[e] > 0 ? 0 : 1];
      const x0 = X[source[e]] * ratio + 0.5, y0 = Y[source[e]] * ratio + 0.5;
      const dx = X[target[e]] * ratio + 0.5 - x0, dy = Y[target[e]] * ratio + 0.5 - y0;
      const steps = Math.max(1, Math.ceil(Math.max(Math.abs(dx), Math.abs(dy))));
      const sx = dx / steps, sy = dy / steps;
      const across = strength >= 2 ? (Math.abs(dx) > Math.abs(dy) ? Wp : 1) : 0; // a second pixel
      let x = x0, y = y0;
      for (let k = 0; k <= steps; k++, x += sx, y += sy) {
        const px = x | 0, py = y | 0;
        if (px < 0 || py < 0 || px >= Wp || py >= Hp - 1) continue;
        const i = py * Wp + px;
        t[i] *= keep;
        if (across) t[i + across] *= keep;
      }
    }
  }

  composite() {
    const Wp = this.edgeLayer.width, Hp = this.edgeLayer.height;
    const ctx = this.edgeLayer.getContext("2d");
    const image = ctx.createImageData(Wp, Hp);
    const data = image.data;
    const [tp, tn] = this.through;
    for (let i = 0; i < Wp * Hp; i++) {
      const p = 1 - tp[i], n = 1 - tn[i];
      if (p + n === 0) continue;
      const j = 4 * i;
      data[j] = (POS[0] * p + NEG[0] * n) / (p + n);
      data[j + 1] = (POS[1] * p + NEG[1] * n) / (p + n);
      data[j + 2] = (POS[2] * p + NEG[2] * n) / (p + n);
      data[j + 3] = 255 * (1 - tp[i] * tn[i]);
    }
    ctx.putImageData(image, 0, 0);
  }

  draw() {
    const t0 = performance.now();
    const ctx = this.canvas.getContext("2d");
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, this.canvas.width, this.canvas.height);
    ctx.setTransform(this.ratio, 0, 0, this.ratio, 0, 0);
    const { nodes, edges, tokens, n_layers } = this.view;
    const sel = this.selected;
    // axes: layer names and the prompt's tokens
    ctx.fillStyle = "#666";
    ctx.font = "11px sans-serif";
    ctx.textBaseline = "middle";
    for (let layer = -1; layer <= n_layers; layer++) {
      const name = layer < 0 ? "emb" : layer === n_layers ? "logit" : `L${layer}`;
      ctx.fillText(name, 4, this.rowY(layer));
    }
    ctx.textAlign = "center";
    for (let p = 0; p < tokens.length; p++) {
      const w = this.colX[p + 1] - this.colX[p];
      let text = tokens[p];
      while (text.length > 1 && ctx.measureText(text).width > w - 2) text = text.slice(0, -1);
      ctx.fillText(text, (this.colX[p] + this.colX[p + 1]) / 2, this.H - 14);
    }
    ctx.textAlign = "start";
    // edges
    ctx.save();
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.globalAlpha = sel >= 0 ? 0.12 : 1;
    ctx.drawImage(this.edgeLayer, 0, 0);
    ctx.restore();
    let highlighted = 0;
    const neighbour = new Set();
    if (sel >= 0) {
      const { inCount, outCount, inEdges, outEdges } = this.adj;
      const lists = [
        [inEdges, inCount[sel], inCount[sel + 1]],
        [outEdges, outCount[sel], outCount[sel + 1]],
      ];
      for (const [list, a, b] of lists) {
        for (let k = a; k < b; k++) {
          const e = list[k];
          if (!this.edgeVisible(e)) continue;
          const w = edges.weight[e];
          const rgb = w > 0 ? POS : NEG;
          ctx.strokeStyle = `rgba(${rgb.join(",")},0.9)`;
          ctx.lineWidth = 0.8 + 4 * Math.sqrt(Math.abs(w) / this.maxWeight);
          ctx.beginPath();
          ctx.moveTo(this.x[edges.source[e]], this.y[edges.source[e]]);
          ctx.lineTo(this.x[edges.target[e]], this.y[edges.target[e]]);
          ctx.stroke();
          neighbour.add(edges.source[e]);
          neighbour.add(edges.target[e]);
          highlighted++;
        }
      }
    }
    // supernodes: a dashed box around their members
    ctx.setLineDash([4, 3]);
    ctx.strokeStyle = "#333";
    ctx.lineWidth = 1;
    for (const s of this.supernodes) {
      const members = s.members.map((k) => this.keyIndex.get(k)).filter((i) => i !== undefined && this.visible[i]);
      if (!members.length) continue;
      const xs = members.map((i) => this.x[i]);
      const ys = members.map((i) => this.y[i]);
      const pad = this.radius + 3;
      const x0 = Math.min(...xs) - pad, y0 = Math.min(...ys) - pad;
      ctx.strokeRect(x0, y0, Math.max(...xs) + pad - x0, Math.max(...ys) + pad - y0);
      ctx.fillStyle = "#333";
      ctx.fillText(s.name, x0, y0 - 6);
    }
    ctx.setLineDash([]);
    // nodes, one path per kind and emphasis
    const n = nodes.key.length;
    const q = this.search.toLowerCase();
    const r = this.radius;
    let drawn = 0;
    this.matches = [];
    for (let kind = 0; kind < 4; kind++) {
      for (const dim of [true, false]) {
        ctx.beginPath();
        for (let i = 0; i < n; i++) {
          if (nodes.kind[i] !== kind || !this.visible[i]) continue;
          const isDim = sel >= 0 && i !== sel && !neighbour.has(i);
          if (isDim !== dim) continue;
          const x = this.x[i], y = this.y[i];
          if (kind === 0) {
            ctx.moveTo(x + r, y);
            ctx.arc(x, y, r, 0, 2 * Math.PI);
          } else if (kind === 1) {
            ctx.rect(x - r, y - r, 2 * r, 2 * r);
          } else if (kind === 2) {
            ctx.rect(x - 2 * r, y - r * 0.8, 4 * r, 1.6 * r);
          } else {
            ctx.moveTo(x, y - 1.4 * r);
            ctx.lineTo(x + 1.4 * r, y);
            ctx.lineTo(x, y + 1.4 * r);
            ctx.lineTo(x - 1.4 * r, y);
            ctx.closePath();
          }
          drawn++;
        }
        ctx.globalAlpha = dim ? 0.25 : 1;
        ctx.fillStyle = FILL[kind];
        ctx.fill();
      }
    }
    ctx.globalAlpha = 1;
    // search matches and the selection, ringed
    if (q) {
      ctx.strokeStyle = "#d10";
      ctx.lineWidth = 2;
      for (let i = 0; i < n; i++) {
        if (!this.visible[i]) continue;
        const text = `${this.labelOf(i)} ${nodes.key[i]}`.toLowerCase();
        if (text.includes(q)) {
          this.matches.push(nodes.key[i]);
          ctx.beginPath();
          ctx.arc(this.x[i], this.y[i], r + 3, 0, 2 * Math.PI);
          ctx.stroke();
        }
      }
    }
    if (sel >= 0 && this.visible[sel]) {
      ctx.strokeStyle = "#000";
      ctx.lineWidth = 2;
      ctx.beginPath();
      ctx.arc(this.x[sel], this.y[sel], r + 3, 0, 2 * Math.PI);
      ctx.stroke();
      ctx.fillStyle = "#000";
      ctx.fillText(this.labelOf(sel) || nodes.key[sel], this.x[sel] + r + 5, this.y[sel] - r - 6);
    }
    // the logits' labels along the top
    ctx.fillStyle = "#333";
    for (let i = 0; i < n; i++) {
      if (nodes.kind[i] === 3) ctx.fillText(this.labelOf(i).split(" (p=")[0], this.x[i] + r + 3, this.top - 12);
    }
    const ds = this.canvas.dataset;
    ds.nodes = String(drawn);
    ds.highlighted = String(highlighted);
    ds.selected = sel >= 0 ? nodes.key[sel] : "";
    ds.matches = String(this.matches.length);
    this.lastDraw = performance.now() - t0;
  }

  labelOf(i) {
    const key = this.view.nodes.key[i];
    return this.labels[key] ?? this.view.nodes.label[i];
  }

  // ---- interaction -------------------------------------------------------------------------------

  select(key) {
    this.selected = this.keyIndex.has(key) ? this.keyIndex.get(key) : -1;
    this.draw();
  }

  setErrors(show) {
    this.showErrors = show;
    if (this.view) this.setData(this.view);
  }

  setSearch(text) {
    this.search = text;
    if (this.view) this.draw();
  }

  hit(event) {
    const rect = this.canvas.getBoundingClientRect();
    const mx = event.clientX - rect.left, my = event.clientY - rect.top;
    let best = -1, bestD = (this.radius + 4) ** 2;
    const gx = Math.floor(mx / 16), gy = Math.floor(my / 16);
    for (let dx = -1; dx <= 1; dx++) {
      for (let dy = -1; dy <= 1; dy++) {
        for (const i of this.grid.get(`${gx + dx},${gy + dy}`) || []) {
          const d = (this.x[i] - mx) ** 2 + (this.y[i] - my) ** 2;
          if (d <= bestD) {
            best = i;
            bestD = d;
          }
        }
      }
    }
    return best;
  }

  hover(event) {
    if (!this.view) return;
    const i = this.hit(event);
    if (i < 0) {
      this.tooltip.hidden = true;
      return;
    }
    const nodes = this.view.nodes;
    const layer = nodes.layer[i] < 0 ? "embedding" : nodes.kind[i] === 3 ? "logit" : `layer ${nodes.layer[i]}`;
    const act = nodes.kind[i] === 3 ? "probability" : nodes.kind[i] === 1 ? "error norm" : "activation";
    this.tooltip.textContent =
      `${this.labelOf(i) || "(no label)"}\n${nodes.key[i]} · ${KIND[nodes.kind[i]]}\n` +
      `${layer}, position ${nodes.pos[i]} (${JSON.stringify(this.view.tokens[nodes.pos[i]])})\n` +
      `${act} ${nodes.act[i]} · influence ${nodes.influence[i]}`;
    this.tooltip.hidden = false;
    const rect = this.canvas.getBoundingClientRect();
    this.tooltip.style.left = `${Math.min(event.clientX - rect.left + 14, this.W - 260)}px`;
    this.tooltip.style.top = `${event.clientY - rect.top + 14}px`;
  }

  click(event) {
    const t0 = performance.now();
    const i = this.hit(event);
    const key = i >= 0 ? this.view.nodes.key[i] : null;
    this.selected = i;
    this.draw();
    this.clickDraw = performance.now() - t0;
    this.handlers.select(key);
  }
}
