// The map's spatial index (KDBush 4, float32 coordinates): one builder for the worker and for
// the main thread when no worker can start. regl-scatterplot takes the same format, so one
// index serves its selection and our hover.
import KDBush from 'kdbush';

export const NODE_SIZE = 64;

export function buildIndex(x, y) {
  const index = new KDBush(x.length, NODE_SIZE, Float32Array);
  for (let i = 0; i < x.length; i++) index.add(x[i], y[i]);
  index.finish();
  return index;
}
