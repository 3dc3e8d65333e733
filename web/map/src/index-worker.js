// Builds the spatial index off the main thread (bundled into build/index-worker.bundle and
// inlined into map.js as a string; see util.js). The index's buffer goes back transferred.
import { buildIndex } from './kdindex.js';

self.onmessage = ({ data: { x, y } }) => {
  const { data } = buildIndex(x, y);
  self.postMessage(data, [data]);
};
