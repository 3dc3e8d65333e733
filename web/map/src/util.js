// Small helpers of the embedding map: DOM, numbers, WebGL probing, binary columns.
import KDBush from 'kdbush';

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

// regl-scatterplot would build its spatial index (KDBush, the same 4.0 format) from its own
// per-point arrays, cloning all of them into a worker past 1M points; built here straight
// from the typed columns it takes a fraction of the time. The hover uses it too.
export function spatialIndex(x, y) {
  const index = new KDBush(x.length, 64, Float32Array);
  for (let i = 0; i < x.length; i++) index.add(x[i], y[i]);
  index.finish();
  return index;
}

export function column(table, name) {
  const col = table?.getChild?.(name);
  return col ? col.toArray() : null;
}

export const fmt = (n) => Number(n).toLocaleString('en-US');
