// Small helpers of the embedding map: DOM, numbers, WebGL probing, binary columns.
import KDBush from 'kdbush';
import workerSource from '../build/index-worker.bundle';
import { buildIndex } from './kdindex.js';

export function el(tag, className, parent, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  if (parent) parent.appendChild(node);
  return node;
}

export function webglProblem() {
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
export function indicesToBase64(indices) {
  const u32 = Uint32Array.from(indices);
  const bytes = new Uint8Array(u32.buffer);
  let out = '';
  const chunk = 0x8000;
  for (let i = 0; i < bytes.length; i += chunk) {
    out += String.fromCharCode.apply(null, bytes.subarray(i, i + chunk));
  }
  return btoa(out);
}

// The spatial index (kdindex.js), built in a worker so that it overlaps the WebGL set-up on
// the main thread, which it used to freeze for 0.09 s at 200k points and 0.7 s at 2M
// (measured). regl-scatterplot would build its own from its per-point arrays, cloning all of
// them into a worker past 1M points; built straight from the typed columns it takes a fraction
// of the time, and the hover uses it too. The worker starts from the bundled source as a blob
// URL, so the component stays one file; where no worker can start (a CSP without blob:, say)
// or it fails, the index is built on the page instead.
// Resolves to {index, builtIn: 'worker' | 'page'}.
let workerUrl;
export function spatialIndexAsync(x, y) {
  let worker;
  try {
    workerUrl ||= URL.createObjectURL(new Blob([workerSource], { type: 'text/javascript' }));
    worker = new Worker(workerUrl);
  } catch {
    return Promise.resolve({ index: buildIndex(x, y), builtIn: 'page' });
  }
  return new Promise((resolve) => {
    const done = (index, builtIn) => {
      worker.terminate();
      resolve({ index, builtIn });
    };
    worker.onmessage = ({ data }) => {
      if (data instanceof ArrayBuffer) done(KDBush.from(data), 'worker');
      else done(buildIndex(x, y), 'page');
    };
    worker.onerror = (ev) => {
      ev.preventDefault();
      done(buildIndex(x, y), 'page');
    };
    worker.postMessage({ x, y });
  });
}

// Whether two typed arrays hold the same numbers (a few ms at 2M points).
export function sameValues(a, b) {
  if (!a || !b || a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

export function column(table, name) {
  const col = table?.getChild?.(name);
  return col ? col.toArray() : null;
}

export const fmt = (n) => Number(n).toLocaleString('en-US');
