// The mmviz embedding map: a Streamlit custom component (v2) drawing up to millions of points
// with regl-scatterplot (WebGL), fed binary columns (Arrow) from Python (app/map.py).
//
// One JS module serves three instances per map:
//   * the map itself: data = {points: Arrow table x/y/c[/v], config: {...}}; big, rarely changes;
//   * two relays, data = {overlay_for, lines?, selected?} and {overlay_for, hover}: small, they
//     change with the selection and on every hover. They hand their data to the map through a
//     window CustomEvent, so a hover rerun does not change (and re-send) the big message.
import createScatterplot, { createRenderer } from 'regl-scatterplot';
import { drawArrow, drawBrush, drawHoverRing, drawPairLines, renderLegend } from './draw2d.js';
import './map.css';
import { column, el, fmt, indicesToBase64, sameValues, spatialIndexAsync, webglProblem } from './util.js';

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
    this.reportShown();
  }

  // Tell Python these points are on screen (or that the map could not draw them), once per
  // token: a page can then send what it held back so as not to slow the first draw.
  reportShown() {
    const token = this.config?.token ?? '';
    if (this.setStateValue && this.reportedShown !== token) {
      this.reportedShown = token;
      this.setStateValue('shown', token);
    }
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
    // New colours on the same positions (Colour by) keep the index: 0.7 s to rebuild at 2M points
    const moved = !this.indexReady || !sameValues(this.points?.x, x) || !sameValues(this.points?.y, y);
    this.points = { x, y, c, v };
    if (config.n === 0) {
      this.fail('No points to draw.');
      return;
    }
    // started first: the worker builds it while WebGL is set up here
    this.indexReady = moved ? spatialIndexAsync(x, y)
      : this.indexReady.then(({ index }) => ({ index, builtIn: 'kept' }));
    this.root.dataset.drawn = '';
    this.root.dataset.state = 'drawing';
    this.message.hidden = false;
    this.message.textContent = `Drawing ${fmt(config.n)} points…`;
    renderLegend(this.legend, config);
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
      // Our own renderer, sized to the map: regl-scatterplot's default one renders into a
      // float framebuffer the size of the whole window (times the pixel ratio squared) and
      // copies out the middle, which costs memory and time in every frame.
      const shared = document.createElement('canvas');
      const dpr = window.devicePixelRatio || 1;
      shared.width = Math.max(1, Math.round(rect.width * dpr));
      shared.height = Math.max(1, Math.round(rect.height * dpr));
      this.renderer = createRenderer({ canvas: shared });
      this.root.dataset.renderSize = `${shared.width}x${shared.height}`;
      this.plot = createScatterplot({
        renderer: this.renderer,
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
      this.renderer?.destroy();
      this.renderer = null;
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
    const { index: built, builtIn } = await this.indexReady; // built in a worker meanwhile: the wait
    this.index = built;
    this.root.dataset.indexBuilt = builtIn;
    const index = built.data;
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
    this.reportShown();
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
  toPixel = (x, y) => {
    const m = this.viewMatrix;
    const { width, height } = this.size;
    const cx = (m[0] * x + m[4] * y + m[12]) / (width / height);
    const cy = m[1] * x + m[5] * y + m[13];
    return [((cx + 1) / 2) * width, ((1 - cy) / 2) * height];
  };

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
    if (resized) {
      this.renderer.resize(rect.width, rect.height); // the frame is rendered at the map's size
      this.root.dataset.renderSize = `${this.renderer.canvas.width}x${this.renderer.canvas.height}`;
      this.plot.set({ width: rect.width, height: rect.height });
    }
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
    const ctx = this.context2d(this.linesCanvas);
    if (this.lines && this.points) drawPairLines(ctx, this.lines, this.points, this.toPixel);
    this.drawTop();
  }

  drawTop() {
    const ctx = this.context2d(this.arrowCanvas);
    const theme = this.theme();
    if (this.config?.arrow) drawArrow(ctx, this.config.arrow, this.toPixel, theme);
    if (this.hovered >= 0 && this.points) {
      const at = this.toPixel(this.points.x[this.hovered], this.points.y[this.hovered]);
      drawHoverRing(ctx, at, this.pointRadius(), this.pointColour(this.hovered), theme);
    }
    if (this.brush) drawBrush(ctx, this.brushPolygon(), this.brush.type, theme);
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
    this.renderer?.destroy(); // a renderer passed in is not the plot's to destroy
    this.root.remove();
  }
}
