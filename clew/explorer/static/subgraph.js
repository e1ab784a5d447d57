// The subgraph panel's picture: each group (a supernode, or a pinned node of its own) placed by its
// members' mean position (x) and layer (y), with the summed edges between groups.

export function drawSubgraph(canvas, result, nTokens, nLayers) {
  const ratio = window.devicePixelRatio || 1;
  const W = canvas.parentElement.clientWidth || 300;
  const H = 220;
  canvas.width = W * ratio;
  canvas.height = H * ratio;
  canvas.style.width = `${W}px`;
  canvas.style.height = `${H}px`;
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, W, H);
  if (!result || !result.groups.length) {
    ctx.fillStyle = "#888";
    ctx.font = "12px sans-serif";
    ctx.fillText("pin nodes (double-click, or Pin) to build a subgraph", 8, 20);
    return;
  }
  const where = (key) => {
    const m = /@(\d+)$/.exec(key);
    const pos = m ? Number(m[1]) : nTokens - 1;
    const l = /^L(\d+)\//.exec(key) || /^error L(\d+)@/.exec(key);
    const layer = key.startsWith("token") ? -1 : key.startsWith("logit") ? nLayers : l ? Number(l[1]) : 0;
    return [pos, layer];
  };
  const taken = new Map();
  const means = result.groups.map((g) => {
    const spots = g.members.map(where);
    return [spots.reduce((a, s) => a + s[0], 0) / spots.length, spots.reduce((a, s) => a + s[1], 0) / spots.length];
  });
  // only the positions in use get a column, left to right, with room for the names
  const columns = [...new Set(means.map((m) => Math.round(m[0])))].sort((a, b) => a - b);
  const points = means.map(([pos, layer]) => {
    const c = columns.indexOf(Math.round(pos));
    let x = 14 + ((c + 0.5) / columns.length) * (W - 120);
    let y = H - 20 - ((layer + 1.5) / (nLayers + 2)) * (H - 40);
    const cell = `${Math.round(x / 20)},${Math.round(y / 14)}`;
    const k = taken.get(cell) || 0;
    taken.set(cell, k + 1);
    return [x + k * 18, y - k * 10];
  });
  let max = 1e-12;
  for (const e of result.edges) max = Math.max(max, Math.abs(e.weight));
  for (const e of result.edges) {
    const [x0, y0] = points[e.source];
    const [x1, y1] = points[e.target];
    ctx.strokeStyle = e.weight > 0 ? "rgba(43,108,176,0.8)" : "rgba(197,48,48,0.8)";
    ctx.lineWidth = 0.5 + 4 * Math.sqrt(Math.abs(e.weight) / max);
    ctx.beginPath();
    ctx.moveTo(x0, y0);
    ctx.lineTo(x1, y1);
    ctx.stroke();
  }
  ctx.font = "11px sans-serif";
  result.groups.forEach((g, i) => {
    const [x, y] = points[i];
    const isSuper = g.members.length > 1 || g.name !== g.members[0];
    ctx.fillStyle = isSuper ? "#fbe3c0" : "#e0912b";
    ctx.strokeStyle = "#333";
    ctx.lineWidth = 1;
    ctx.beginPath();
    if (isSuper) ctx.rect(x - 7, y - 7, 14, 14);
    else ctx.arc(x, y, 5, 0, 2 * Math.PI);
    ctx.fill();
    ctx.stroke();
    ctx.fillStyle = "#222";
    ctx.fillText(g.name.length > 22 ? g.name.slice(0, 21) + "…" : g.name, x + 9, y + 4);
  });
}
