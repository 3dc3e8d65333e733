// The mmviz embedding map: a Streamlit custom component (v2) drawing up to millions of points
// with regl-scatterplot (WebGL), fed binary columns (Arrow) from Python (app/map.py).
//
// One JS module serves three instances per map:
//   * the map itself: data = {points: Arrow table x/y/c[/v], config: {...}}; big, rarely changes;
//   * two relays, data = {overlay_for, lines?, selected?} and {overlay_for, hover}: small, they
//     change with the selection and on every hover. They hand their data to the map through a
//     window CustomEvent, so a hover rerun does not change (and re-send) the big message.
import KDBush from 'kdbush';
import createScatterplot from 'regl-scatterplot';
import './map.css';

const OVERLAY_EVENT = 'mmviz-map-overlay';
const HOVER_DEBOUNCE_MS = 150;
const VIEW_PAD = 0.04; // fraction of the data box left free around it by "Reset view"

// Latest overlay per map target; kept on window so an overlay that arrives before its map
// (or survives the map's remount) is still found.
const overlays = (window.__mmvizMapOverlays ||= new Map());
const maps = new WeakMap(); // Streamlit parentElement -> MapView

export default function mountMap(component) {
  const { data, parentElement } = component;
  if (data && typeof data.overlay_for === 'string') {
    // two relays per map (lines+selection, hover); each updates its own keys
    overlays.set(data.overlay_for, { ...overlays.get(data.overlay_for), ...data });
    window.dispatchEvent(new CustomEvent(OVERLAY_EVENT, { detail: { target: data.overlay_for } }));
    return undefined;
  }
  let view = maps.get(parentElement);
  if (!view) {
    view = new MapView(parentElement);
    maps.set(parentElement, view);
  }
  view.update(component);
  return () => {
    view.destroy();
    maps.delete(parentElement);
  };
}

function el(tag, className, parent, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  if (parent) parent.appendChild(node);
  return node;
}

function webglProblem() {
  try {
    const probe = document.createElement('canvas');
    const gl = probe.getContext('webgl');
    if (!gl) return 'WebGL is not available in this browser';
    gl.getExtension('WEBGL_lose_context')?.loseContext();
    return null;
  } catch (err) {
    return `WebGL failed to start: ${err}`;
  }
}

// Indices as base64 little-endian uint32: a million-point lasso is 5 MB instead of ~7 MB of
// JSON, and Python decodes it with one np.frombuffer.
function indicesToBase64(indices) {
  const u32 = Uint32Array.from(indices);
  const bytes = new Uint8Array(u32.buffer);
  let out = '';
  const chunk = 0x8000;
  for (let i = 0; i < bytes.length; i += chunk) {
    out += String.fromCharCode.apply(null, bytes.subarray(i, i + chunk));
  }
  return btoa(out);
}

// regl-scatterplot would build its spatial index (KDBush, the same 4.0 format) from its own
// per-point arrays, cloning all of them into a worker past 1M points; built here straight
// from the typed columns it takes a fraction of the time. The hover uses it too.
function spatialIndex(x, y) {
  const index = new KDBush(x.length, 64, Float32Array);
  for (let i = 0; i < x.length; i++) index.add(x[i], y[i]);
  index.finish();
  return index;
}

function column(table, name) {
  const col = table?.getChild?.(name);
  return col ? col.toArray() : null;
}

const fmt = (n) => Number(n).toLocaleString('en-US');

class MapView {
  constructor(parent) {
    this.parent = parent;
    this.root = el('div', 'mmviz-map', parent);
    this.root.dataset.state = 'loading';
    // Pair lines go under the points (regl-scatterplot's canvas is transparent), the arrow on top.
    this.linesCanvas = el('canvas', 'mmviz-map__overlay', this.root);
    this.glCanvas = el('canvas', 'mmviz-map__gl', this.root);
    this.arrowCanvas = el('canvas', 'mmviz-map__overlay', this.root);
    this.toolbar = el('div', 'mmviz-map__toolbar', this.root);
    this.legend = el('div', 'mmviz-map__legend', this.root);
    this.note = el('div', 'mmviz-map__note', this.root);
    this.tooltip = el('div', 'mmviz-map__tooltip', this.root);
    this.tooltip.hidden = true;
    this.message = el('div', 'mmviz-map__message', this.root, 'Loading the map…');
    this.token = null;
    this.linesToken = undefined;
    this.selectedToken = undefined;
    this.lines = null;
    this.hovered = -1;
    this.hoverTimer = null;
    this.details = new Map();
    this.lastView = '';
    this.mode = 'pan';
    this.onOverlay = (ev) => {
      if (this.config && ev.detail?.target === this.config.target) this.applyOverlay();
    };
    window.addEventListener(OVERLAY_EVENT, this.onOverlay);
    this.buildToolbar();
  }

  fail(text) {
    this.root.dataset.state = 'error';
    this.message.hidden = false;
    this.message.textContent = text;
  }

  buildToolbar() {
    const modes = [
      ['pan', 'Pan', 'Drag to pan, scroll to zoom (shift-drag lassoes)'],
      ['lasso', 'Lasso', 'Drag a free-form lasso to select points'],
      ['box', 'Box', 'Drag a rectangle to select points'],
    ];
    this.modeButtons = {};
    for (const [mode, label, title] of modes) {
      const button = el('button', 'mmviz-map__button', this.toolbar, label);
      button.type = 'button';
      button.title = title;
      button.setAttribute('aria-label', `${label} mode`);
      button.addEventListener('click', () => this.setMode(mode));
      this.modeButtons[mode] = button;
    }
    const reset = el('button', 'mmviz-map__button', this.toolbar, 'Reset view');
    reset.type = 'button';
    reset.title = 'Fit all points in the view';
    reset.addEventListener('click', () => this.resetView());
    this.markMode();
  }

  markMode() {
    for (const [mode, button] of Object.entries(this.modeButtons)) {
      button.classList.toggle('mmviz-map__button--active', mode === this.mode);
      button.setAttribute('aria-pressed', String(mode === this.mode));
    }
    this.root.dataset.mode = this.mode;
  }

  setMode(mode) {
    this.mode = mode;
    this.markMode();
  }

  // --- Lasso and box selection, drawn on the 2-D overlay. regl-scatterplot's own lasso is
  // drawn in WebGL, so every mouse move re-renders every point (seconds per move at 2M points
  // in software GL), and its throttled rectangle can miss the last move before the button is
  // released. Here the outline costs a 2-D stroke per move, the polygon ends exactly where the
  // button went up, and the library still picks the points (plot.lassoSelect, its spatial
  // index), so what is selected is what regl-scatterplot itself would select.
  startBrush(event) {
    if (event.button !== 0 || !this.pointsReady) return;
    if (this.mode === 'pan' && !event.shiftKey) return;
    if (event.target.closest('.mmviz-map__toolbar, .mmviz-map__legend')) return;
    event.stopPropagation(); // keeps the camera from panning and the library from clicking
    event.preventDefault();
    const rect = this.glCanvas.getBoundingClientRect();
    const at = (ev) => [ev.clientX - rect.left, ev.clientY - rect.top];
    this.brush = { type: this.mode === 'box' ? 'box' : 'lasso', points: [at(event)] };
    const move = (ev) => {
      ev.stopPropagation(); // the library would hover (and re-render) points under the drag
      const p = at(ev);
      const pts = this.brush.points;
      if (this.brush.type === 'box') pts[1] = p;
      else if (Math.hypot(p[0] - pts[pts.length - 1][0], p[1] - pts[pts.length - 1][1]) >= 2) pts.push(p);
      this.drawTop();
    };
    const up = (ev) => {
      window.removeEventListener('mousemove', move, true);
      window.removeEventListener('mouseup', up, true);
      move(ev);
      this.finishBrush();
    };
    window.addEventListener('mousemove', move, true);
    window.addEventListener('mouseup', up, true);
  }

  brushPolygon() {
    const pts = this.brush.points;
    if (this.brush.type !== 'box') return pts;
    if (pts.length < 2) return [];
    const [[x0, y0], [x1, y1]] = pts;
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]];
  }

  finishBrush() {
    const polygon = this.brushPolygon();
    this.brush = null;
    this.drawTop();
    const xs = polygon.map((p) => p[0]);
    const ys = polygon.map((p) => p[1]);
    const tiny = polygon.length < 3 || Math.max(...xs) - Math.min(...xs) + Math.max(...ys) - Math.min(...ys) < 4;
    if (tiny) return; // a click, not a drag
    this.swallowClick = true; // the click that ends a drag must not also select a point
    this.plot.lassoSelect(polygon.map(([px, py]) => this.toNdc(px, py)), { isGl: true });
  }

  theme() {
    const css = getComputedStyle(this.root);
    const pick = (name, fallback) => css.getPropertyValue(name).trim() || fallback;
    return {
      background: pick('--st-background-color', '#ffffff'),
      text: pick('--st-text-color', '#31333f'),
      primary: pick('--st-primary-color', '#ff4b4b'),
    };
  }

  update(component) {
    const { data, setStateValue, setTriggerValue } = component;
    this.setStateValue = setStateValue;
    this.setTriggerValue = setTriggerValue;
    const config = data?.config;
    if (!config) {
      this.fail('The map received no data.');
      return;
    }
    this.config = config;
    this.root.style.height = `${config.height}px`;
    this.root.dataset.target = config.target;
    if (config.token === this.token) {
      this.applyOverlay();
      if (this.viewMatrix) this.drawTop(); // the theme may have changed
      return;
    }
    const arrived = performance.now();
    const x = column(data.points, 'x');
    const y = column(data.points, 'y');
    const c = column(data.points, 'c');
    const v = column(data.points, 'v');
    if (!x || !y || !c || x.length !== config.n) {
      this.fail('The map data did not arrive intact (expected Arrow columns x, y, c).');
      return;
    }
    this.token = config.token;
    this.pointsReady = false;
    this.points = { x, y, c, v };
    if (config.n === 0) {
      this.fail('No points to draw.');
      return;
    }
    this.root.dataset.drawn = '';
    this.root.dataset.state = 'drawing';
    this.message.hidden = false;
    this.message.textContent = `Drawing ${fmt(config.n)} points…`;
    this.renderLegend();
    this.note.textContent = `${fmt(config.n)} points`;
    if (!this.plot && !this.createPlot()) return;
    // One draw at a time (regl-scatterplot rejects overlapping draws); a newer token wins.
    const token = config.token;
    this.drawing = (this.drawing || Promise.resolve())
      .then(() => (token === this.token ? this.draw(arrived) : undefined))
      .catch((err) => this.fail(`The map failed to draw: ${err?.message || err}`));
  }

  createPlot() {
    const problem = webglProblem();
    if (problem) {
      this.fail(`${problem}, so the embedding map cannot be drawn. Enable hardware acceleration ` +
        '(or, headless, software GL) and reload.');
      return false;
    }
    const theme = this.theme();
    // Explicit size: with 'auto' the plot is 1x1 px until its ResizeObserver fires, and the
    // first view would be fitted to that.
    const rect = this.root.getBoundingClientRect();
    try {
      this.plot = createScatterplot({
        canvas: this.glCanvas,
        width: rect.width > 0 ? rect.width : 'auto',
        height: rect.height > 0 ? rect.height : 'auto',
        backgroundColor: theme.background,
        // no key starts the library's own lasso: shift-drag is ours (startBrush)
        actionKeyMap: { merge: 'cmd', remove: 'alt' },
        pointColorActive: '#d62728',
        pointOutlineWidth: 1,
        pointSizeSelected: 1,
        opacityInactiveScale: 0.5,
      });
    } catch (err) {
      this.fail(`WebGL failed to start (${err?.message || err}), so the embedding map cannot be drawn.`);
      return false;
    }
    if (!this.plot.isSupported) {
      this.fail('This browser\'s WebGL lacks float textures, which the embedding map needs.');
      return false;
    }
    // 'drawing' is published synchronously with each GL frame, so the overlay never lags.
    this.plot.subscribe('drawing', () => {
      this.frames = (this.frames || 0) + 1;
      this.root.dataset.frames = String(this.frames); // GL frames so far (each costs in software GL)
      this.onFrame();
    });
    // Hover is ours: regl-scatterplot re-renders every point to highlight a hovered one
    // (seconds per move at 2M points in software GL). Moves over the map with no button down
    // stop here (drags still reach the camera), and the hovered point is ringed on the overlay.
    this.onMove = (ev) => this.hoverAt(ev);
    window.addEventListener('mousemove', this.onMove, true);
    for (const type of ['mouseenter', 'mouseleave']) {
      this.root.addEventListener(type, (ev) => {
        if (ev.target === this.glCanvas) ev.stopPropagation();
        if (type === 'mouseleave' && this.hovered >= 0) this.onHoverOut();
      }, true);
    }
    this.plot.subscribe('select', ({ points }) => this.sendSelection(points));
    this.plot.subscribe('deselect', () => this.sendSelection([]));
    this.root.addEventListener('mousedown', (ev) => this.startBrush(ev), true);
    this.root.addEventListener('click', (ev) => {
      if (this.swallowClick) ev.stopPropagation();
      this.swallowClick = false;
    }, true);
    this.resizeObserver = new ResizeObserver(() => this.resizeOverlay());
    this.resizeObserver.observe(this.root);
    this.resizeOverlay();
    this.setMode(this.mode);
    return true;
  }

  async draw(arrived) {
    const { x, y, c, v } = this.points;
    const config = this.config;
    const byValue = config.colour_by === 'value' && v;
    const data = byValue ? { x, y, valueA: c, valueB: v } : { x, y, valueA: c };
    // set() redraws on the next animation frame; awaiting it keeps that redraw from becoming
    // a second full frame right after the first one with points.
    await this.plot.set({
      pointSize: config.point_size,
      colorBy: byValue ? 'valueB' : 'valueA',
      pointColor: byValue ? config.colormap : config.colours,
      // Dense maps: fade points by local density so clusters keep their structure.
      opacityBy: config.n > 50000 ? 'density' : null,
      opacity: 1,
    });
    this.linesToken = undefined; // indices may refer to other points now
    this.selectedToken = undefined;
    this.pointsReady = false;
    // Aim the camera first: in software GL each full frame of 2M points costs seconds, so the
    // first frame should already be the final one. New colours on the same positions keep
    // the user's view.
    const bboxKey = config.bbox.join(',');
    if (bboxKey !== this.bboxKey) {
      this.bboxKey = bboxKey;
      this.resetView();
    }
    const t0 = performance.now();
    this.index = x.length ? spatialIndex(x, y) : null;
    const index = this.index?.data;
    const tIndex = performance.now();
    await this.plot.draw(data, {
      zDataType: 'categorical',
      wDataType: 'continuous',
      spatialIndex: index,
    });
    const t1 = performance.now();
    this.pointsReady = true;
    this.applyOverlay();
    // plot.draw resolves after the GL frame with all points; one more animation frame and the
    // browser has composited it.
    await new Promise((resolve) => requestAnimationFrame(resolve));
    const t2 = performance.now();
    // Where the time went (ms): reading the columns and setting up, our spatial index,
    // regl-scatterplot's draw (its point arrays, textures and the first GL frame), compositing;
    // and how many GL frames this map has rendered so far.
    this.root.dataset.timings = JSON.stringify({
      setup: Math.round(t0 - arrived), index: Math.round(tIndex - t0), load: Math.round(t1 - tIndex), frame: Math.round(t2 - t1), frames: this.frames,
    });
    this.message.hidden = true;
    this.root.dataset.state = 'drawn';
    this.root.dataset.drawMs = String(Math.round(performance.now() - arrived));
    this.root.dataset.drawnAt = String(Math.round(performance.now()));
    this.root.dataset.drawn = String(config.n);
  }

  resetView() {
    if (!this.plot || !this.config) return;
    const [x0, y0, x1, y1] = this.config.bbox;
    const w = Math.max(x1 - x0, 1e-6);
    const h = Math.max(y1 - y0, 1e-6);
    this.plot.zoomToArea({
      x: x0 - w * VIEW_PAD,
      y: y0 - h * VIEW_PAD,
      width: w * (1 + 2 * VIEW_PAD),
      height: h * (1 + 2 * VIEW_PAD),
    });
  }

  // --- NDC <-> pixels, the renderer's own transform: clip = projection · view · model · p,
  // with projection = scale(1 / aspect, 1) and model = identity (data aspect ratio 1).
  toPixel(x, y) {
    const m = this.viewMatrix;
    const { width, height } = this.size;
    const cx = (m[0] * x + m[4] * y + m[12]) / (width / height);
    const cy = m[1] * x + m[5] * y + m[13];
    return [((cx + 1) / 2) * width, ((1 - cy) / 2) * height];
  }

  toNdc(px, py) {
    const m = this.viewMatrix;
    const { width, height } = this.size;
    const cx = (px / width) * 2 - 1;
    const cy = 1 - (py / height) * 2;
    const ax = cx * (width / height) - m[12];
    const ay = cy - m[13];
    const det = m[0] * m[5] - m[4] * m[1];
    return [(m[5] * ax - m[4] * ay) / det, (m[0] * ay - m[1] * ax) / det];
  }

  onFrame() {
    const m = this.plot.get('cameraView');
    const rect = this.glCanvas.getBoundingClientRect();
    this.viewMatrix = m;
    this.size = { width: rect.width, height: rect.height };
    const key = `${m[0]},${m[1]},${m[4]},${m[5]},${m[12]},${m[13]},${rect.width},${rect.height}`;
    if (key === this.lastView && !this.overlayDirty) return;
    this.lastView = key;
    this.overlayDirty = false;
    const [ax, ay] = this.toNdc(0, rect.height);
    const [bx, by] = this.toNdc(rect.width, 0);
    // The visible data box in NDC (left, bottom, right, top): lets tests map pixels to points.
    this.root.dataset.view = [ax, ay, bx, by].map((t) => t.toFixed(6)).join(',');
    this.drawOverlay();
    this.placeTooltip();
  }

  resizeOverlay() {
    const rect = this.root.getBoundingClientRect();
    const resized = this.plot && rect.width > 0 && rect.height > 0 &&
      (rect.width !== this.plot.get('width') || rect.height !== this.plot.get('height'));
    // (a redundant set would re-render every point: seconds at 2M points in software GL)
    if (resized) this.plot.set({ width: rect.width, height: rect.height });
    const dpr = window.devicePixelRatio || 1;
    for (const canvas of [this.linesCanvas, this.arrowCanvas]) {
      canvas.width = Math.max(1, Math.round(rect.width * dpr));
      canvas.height = Math.max(1, Math.round(rect.height * dpr));
    }
    this.overlayDirty = true;
    if (this.plot && this.viewMatrix) this.onFrame();
  }

  context2d(canvas) {
    const ctx = canvas.getContext('2d');
    const dpr = canvas.width / Math.max(1, this.size.width);
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    return ctx;
  }

  drawOverlay() {
    const lines = this.context2d(this.linesCanvas);
    const { x, y } = this.points || {};
    if (this.lines && x) {
      const { a, b } = this.lines;
      lines.beginPath();
      for (let k = 0; k < a.length; k++) {
        const [px, py] = this.toPixel(x[a[k]], y[a[k]]);
        const [qx, qy] = this.toPixel(x[b[k]], y[b[k]]);
        lines.moveTo(px, py);
        lines.lineTo(qx, qy);
      }
      lines.strokeStyle = 'rgba(120, 120, 120, 0.35)';
      lines.lineWidth = 1;
      lines.stroke();
    }
    this.drawTop();
  }

  drawTop() {
    const top = this.context2d(this.arrowCanvas);
    if (this.config?.arrow) this.drawArrow(top, this.config.arrow);
    if (this.hovered >= 0 && this.points) {
      const [px, py] = this.toPixel(this.points.x[this.hovered], this.points.y[this.hovered]);
      const r = this.pointRadius();
      top.beginPath();
      top.arc(px, py, Math.max(2.5, r), 0, 2 * Math.PI); // the point itself, unfaded
      top.fillStyle = this.pointColour(this.hovered);
      top.fill();
      top.beginPath();
      top.arc(px, py, r + 3, 0, 2 * Math.PI);
      top.lineWidth = 2;
      top.strokeStyle = this.theme().text;
      top.stroke();
    }
    if (this.brush) {
      const polygon = this.brushPolygon();
      if (polygon.length < 2) return;
      top.beginPath();
      polygon.forEach(([px, py], k) => (k ? top.lineTo(px, py) : top.moveTo(px, py)));
      top.closePath();
      const { primary } = this.theme();
      top.globalAlpha = 0.12;
      top.fillStyle = primary;
      top.fill();
      top.globalAlpha = 1;
      top.setLineDash(this.brush.type === 'box' ? [6, 4] : []);
      top.strokeStyle = primary;
      top.lineWidth = 1.5;
      top.stroke();
      top.setLineDash([]);
    }
  }

  drawArrow(ctx, arrow) {
    const [sx, sy] = this.toPixel(...arrow.from);
    const [ex, ey] = this.toPixel(...arrow.to);
    const len = Math.hypot(ex - sx, ey - sy);
    const ux = len > 0 ? (ex - sx) / len : 1;
    const uy = len > 0 ? (ey - sy) / len : 0;
    const head = Math.min(16, Math.max(8, len * 0.35));
    const theme = this.theme();
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
      const lx = px + away * ux * 12 - (away * ux < 0 ? w : 0) - (Math.abs(ux) < 0.3 ? w / 2 : 0);
      const ly = py + away * uy * 12 + (away * uy > 0 ? 14 : -2);
      ctx.lineWidth = 4;
      ctx.strokeStyle = theme.background;
      ctx.strokeText(text, lx, ly);
      ctx.fillStyle = theme.text;
      ctx.fillText(text, lx, ly);
    }
  }

  renderLegend() {
    const config = this.config;
    this.legend.replaceChildren();
    if (config.colour_by === 'value' && config.colormap) {
      el('div', 'mmviz-map__legend-title', this.legend, config.value_label || 'value');
      const bar = el('div', 'mmviz-map__colorbar', this.legend);
      bar.style.background = `linear-gradient(to right, ${config.colormap.join(', ')})`;
      const ticks = el('div', 'mmviz-map__ticks', this.legend);
      const [lo, hi] = config.value_range;
      el('span', '', ticks, Number(lo).toPrecision(3));
      el('span', '', ticks, Number(hi).toPrecision(3));
      return;
    }
    config.categories.forEach((label, i) => {
      const row = el('div', 'mmviz-map__legend-row', this.legend);
      const swatch = el('span', 'mmviz-map__swatch', row);
      swatch.style.background = config.colours[i];
      el('span', 'mmviz-map__legend-label', row, label);
      el('span', 'mmviz-map__legend-count', row, fmt(config.counts[i]));
    });
  }

  applyOverlay() {
    const overlay = overlays.get(this.config?.target);
    if (!overlay || !this.pointsReady) return;
    if (overlay.lines_token !== this.linesToken) {
      this.linesToken = overlay.lines_token;
      const a = column(overlay.lines, 'a');
      const b = column(overlay.lines, 'b');
      this.lines = a && b ? { a, b } : null;
      this.overlayDirty = true;
      if (this.viewMatrix) this.onFrame();
    }
    if (overlay.selected_token !== this.selectedToken) {
      this.selectedToken = overlay.selected_token;
      const picked = column(overlay.selected, 'i');
      // Python usually echoes the selection just made here: re-selecting it would only cost
      // another full frame.
      if (picked && !this.isSelected(picked)) {
        if (picked.length) this.plot.select(Array.from(picked), { preventEvent: true });
        else this.plot.deselect({ preventEvent: true });
      }
    }
    this.root.dataset.selected = String(this.plot.get('selectedPoints').length);
    if (overlay.hover) {
      this.details.set(overlay.hover.index, overlay.hover);
      if (this.details.size > 256) this.details.delete(this.details.keys().next().value);
      if (overlay.hover.index === this.hovered) this.fillTooltip();
    }
  }

  hoverAt(ev) {
    if (ev.buttons !== 0 || this.brush || !this.pointsReady || !this.viewMatrix) return;
    if (ev.target !== this.glCanvas) {
      if (this.hovered >= 0) this.onHoverOut();
      return;
    }
    ev.stopPropagation();
    const rect = this.glCanvas.getBoundingClientRect();
    const px = ev.clientX - rect.left;
    const py = ev.clientY - rect.top;
    const i = this.nearest(px, py);
    if (i !== this.hovered) {
      if (i >= 0) this.onHover(i);
      else this.onHoverOut();
    }
  }

  pointRadius() {
    // regl-scatterplot's 'asinh' point scaling: points grow slowly as one zooms in
    const zoom = this.plot.get('camera').scaling[0];
    const scale = zoom > 1 ? Math.asinh(zoom) / Math.asinh(1) : zoom;
    return (this.config.point_size * scale) / 2;
  }

  pointColour(i) {
    const { c, v } = this.points;
    const { colormap, colours, colour_by: by } = this.config;
    if (by === 'value' && v) return colormap[Math.round(v[i] * (colormap.length - 1))];
    return colours[c[i]];
  }

  nearest(px, py) {
    const [x, y] = this.toNdc(px, py);
    const [x2] = this.toNdc(px + Math.max(5, this.pointRadius() + 3), py);
    const r = Math.abs(x2 - x);
    let best = -1;
    let bestD = r * r;
    const { x: xs, y: ys } = this.points;
    for (const i of this.index.range(x - r, y - r, x + r, y + r)) {
      const d = (xs[i] - x) ** 2 + (ys[i] - y) ** 2;
      if (d <= bestD) {
        bestD = d;
        best = i;
      }
    }
    return best;
  }

  isSelected(indices) {
    const current = this.plot.get('selectedPoints');
    if (current.length !== indices.length) return false;
    const mask = new Uint8Array(this.config.n);
    for (const i of current) mask[i] = 1;
    return indices.every((i) => mask[i] === 1);
  }

  onHover(index) {
    this.hovered = index;
    this.root.dataset.hover = String(index);
    this.fillTooltip();
    this.placeTooltip();
    this.drawTop();
    clearTimeout(this.hoverTimer);
    // Report only where the pointer rests: sweeping across points must not flood reruns.
    this.hoverTimer = setTimeout(() => {
      if (this.hovered === index && this.reportedHover !== index) {
        this.reportedHover = index;
        this.setStateValue('hover', index);
      }
    }, HOVER_DEBOUNCE_MS);
  }

  onHoverOut() {
    this.hovered = -1;
    this.root.dataset.hover = '';
    this.tooltip.hidden = true;
    clearTimeout(this.hoverTimer);
    this.drawTop();
  }

  fillTooltip() {
    const i = this.hovered;
    if (i < 0 || !this.config) return;
    const detail = this.details.get(i);
    const label = this.config.categories[this.points.c[i]] ?? '';
    this.tooltip.replaceChildren();
    el('div', 'mmviz-map__tip-title', this.tooltip, detail?.title || `${label} #${fmt(i)}`);
    if (detail?.image) {
      const img = el('img', 'mmviz-map__tip-image', this.tooltip);
      img.alt = detail.title || '';
      img.src = detail.image;
      img.addEventListener('load', () => this.placeTooltip(), { once: true });
    }
    if (detail?.text) el('div', 'mmviz-map__tip-text', this.tooltip, detail.text);
    if (!detail) el('div', 'mmviz-map__tip-wait', this.tooltip, 'loading…');
    this.tooltip.hidden = false;
  }

  placeTooltip() {
    if (this.tooltip.hidden || this.hovered < 0 || !this.viewMatrix) return;
    const { x, y } = this.points;
    const [px, py] = this.toPixel(x[this.hovered], y[this.hovered]);
    const { width, height } = this.size;
    const tw = this.tooltip.offsetWidth;
    const th = this.tooltip.offsetHeight;
    const left = px + 14 + tw > width ? px - 14 - tw : px + 14;
    const top = Math.min(Math.max(4, py - th / 2), Math.max(4, height - th - 4));
    this.tooltip.style.transform = `translate(${Math.round(Math.max(4, left))}px, ${Math.round(top)}px)`;
  }

  sendSelection(points) {
    this.selectionSeq = (this.selectionSeq || 0) + 1;
    this.root.dataset.selected = String(points.length);
    this.setTriggerValue('selection', {
      n: points.length,
      b64: indicesToBase64(points),
      seq: this.selectionSeq,
    });
  }

  destroy() {
    window.removeEventListener(OVERLAY_EVENT, this.onOverlay);
    window.removeEventListener('mousemove', this.onMove, true);
    clearTimeout(this.hoverTimer);
    this.resizeObserver?.disconnect();
    this.plot?.destroy();
    this.root.remove();
  }
}
