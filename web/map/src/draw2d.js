// What the embedding map draws in 2-D over (and under) regl-scatterplot's WebGL points: pair
// lines, the gap arrow, the hovered point's ring, the lasso/box outline; and its legend.
// Positions come in through `toPixel` (NDC -> CSS pixels of the current view).
import { el, fmt } from './util.js';

export function drawPairLines(ctx, lines, points, toPixel) {
  const { a, b } = lines;
  const { x, y } = points;
  ctx.beginPath();
  for (let k = 0; k < a.length; k++) {
    const [px, py] = toPixel(x[a[k]], y[a[k]]);
    const [qx, qy] = toPixel(x[b[k]], y[b[k]]);
    ctx.moveTo(px, py);
    ctx.lineTo(qx, qy);
  }
  ctx.strokeStyle = 'rgba(120, 120, 120, 0.35)';
  ctx.lineWidth = 1;
  ctx.stroke();
}

// The hovered point redrawn unfaded, ringed in the text colour.
export function drawHoverRing(ctx, [px, py], radius, colour, theme) {
  ctx.beginPath();
  ctx.arc(px, py, Math.max(2.5, radius), 0, 2 * Math.PI);
  ctx.fillStyle = colour;
  ctx.fill();
  ctx.beginPath();
  ctx.arc(px, py, radius + 3, 0, 2 * Math.PI);
  ctx.lineWidth = 2;
  ctx.strokeStyle = theme.text;
  ctx.stroke();
}

export function drawBrush(ctx, polygon, type, theme) {
  if (polygon.length < 2) return;
  ctx.beginPath();
  polygon.forEach(([px, py], k) => (k ? ctx.lineTo(px, py) : ctx.moveTo(px, py)));
  ctx.closePath();
  ctx.globalAlpha = 0.12;
  ctx.fillStyle = theme.primary;
  ctx.fill();
  ctx.globalAlpha = 1;
  ctx.setLineDash(type === 'box' ? [6, 4] : []);
  ctx.strokeStyle = theme.primary;
  ctx.lineWidth = 1.5;
  ctx.stroke();
  ctx.setLineDash([]);
}

export function drawArrow(ctx, arrow, toPixel, theme) {
  const [sx, sy] = toPixel(...arrow.from);
  const [ex, ey] = toPixel(...arrow.to);
  const len = Math.hypot(ex - sx, ey - sy);
  const ux = len > 0 ? (ex - sx) / len : 1;
  const uy = len > 0 ? (ey - sy) / len : 0;
  const head = Math.min(16, Math.max(8, len * 0.35));
  const shaft = (width, colour) => {
    ctx.beginPath();
    ctx.moveTo(sx, sy);
    ctx.lineTo(ex - ux * head * 0.8, ey - uy * head * 0.8);
    ctx.strokeStyle = colour;
    ctx.lineWidth = width;
    ctx.lineCap = 'round';
    ctx.stroke();
  };
  const tip = () => {
    ctx.beginPath();
    ctx.moveTo(ex, ey);
    ctx.lineTo(ex - ux * head - uy * head * 0.55, ey - uy * head + ux * head * 0.55);
    ctx.lineTo(ex - ux * head + uy * head * 0.55, ey - uy * head - ux * head * 0.55);
    ctx.closePath();
  };
  shaft(7, theme.background); // a halo keeps the arrow readable over dense points
  tip();
  ctx.lineWidth = 4;
  ctx.strokeStyle = theme.background;
  ctx.stroke();
  shaft(3, theme.text);
  tip();
  ctx.fillStyle = theme.text;
  ctx.fill();
  const [fromColour, toColour] = arrow.colours || ['#ff7f0e', '#1f77b4'];
  const dots = [[sx, sy, fromColour], [ex, ey, toColour]];
  for (const [px, py, colour] of dots) {
    ctx.beginPath();
    ctx.arc(px, py, 5, 0, 2 * Math.PI);
    ctx.fillStyle = colour;
    ctx.fill();
    ctx.lineWidth = 2;
    ctx.strokeStyle = theme.text;
    ctx.stroke();
  }
  ctx.font = '600 13px "Source Sans Pro", "Source Sans 3", sans-serif';
  ctx.textBaseline = 'bottom';
  ctx.lineJoin = 'round';
  const labels = arrow.labels || ['text centre', 'image centre'];
  // Labels sit beyond each end, away from the shaft, so they never cover the arrow.
  for (const [px, py, text, away] of [[sx, sy, labels[0], -1], [ex, ey, labels[1], 1]]) {
    const w = ctx.measureText(text).width;
    // ...but inside the canvas: a centre near the edge would otherwise cut its label off.
    const width = ctx.canvas.width / (window.devicePixelRatio || 1);
    const height = ctx.canvas.height / (window.devicePixelRatio || 1);
    let lx = px + away * ux * 12 - (away * ux < 0 ? w : 0) - (Math.abs(ux) < 0.3 ? w / 2 : 0);
    let ly = py + away * uy * 12 + (away * uy > 0 ? 14 : -2);
    if (lx + w > width - 4 || lx < 4) {  // no room beside the end: above (or below) it instead
      lx = Math.min(Math.max(px - w / 2, 4), width - w - 4);
      ly = py - 10 > 18 ? py - 10 : py + 24;
    }
    ly = Math.min(Math.max(ly, 16), height - 4);
    ctx.lineWidth = 4;
    ctx.strokeStyle = theme.background;
    ctx.strokeText(text, lx, ly);
    ctx.fillStyle = theme.text;
    ctx.fillText(text, lx, ly);
  }
}

export function renderLegend(legend, config) {
  legend.replaceChildren();
  if (config.colour_by === 'value' && config.colormap) {
    el('div', 'mmviz-map__legend-title', legend, config.value_label || 'value');
    const bar = el('div', 'mmviz-map__colorbar', legend);
    bar.style.background = `linear-gradient(to right, ${config.colormap.join(', ')})`;
    const ticks = el('div', 'mmviz-map__ticks', legend);
    const [lo, hi] = config.value_range;
    el('span', '', ticks, Number(lo).toPrecision(3));
    el('span', '', ticks, Number(hi).toPrecision(3));
    return;
  }
  config.categories.forEach((label, i) => {
    const row = el('div', 'mmviz-map__legend-row', legend);
    const swatch = el('span', 'mmviz-map__swatch', row);
    swatch.style.background = config.colours[i];
    el('span', 'mmviz-map__legend-label', row, label);
    el('span', 'mmviz-map__legend-count', row, fmt(config.counts[i]));
  });
}
