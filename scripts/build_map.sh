#!/usr/bin/env bash
# Rebuild the embedding map's browser bundle (mmviz/web/map/map.js + map.css) from web/map/.
# Reproducible: `npm ci` installs exactly what web/map/package-lock.json pins (regl-scatterplot,
# esbuild), and esbuild bundles src/ into one minified ES module. The built files are committed
# (the app needs no Node at run time and loads nothing from a CDN); run this after editing
# web/map/src/ or bumping a dependency, then commit the bundle with the source.
set -euo pipefail
cd "$(dirname "$0")/../web/map"
npm ci --no-audit --no-fund
npm run build
# The bundle carries third-party code: ship each runtime package's licence beside it.
out=../../mmviz/web/map/THIRD_PARTY_LICENSES.txt
: > "$out"
for dir in $(npm ls --omit=dev --all --parseable | tail -n +2 | sort -u); do
  node -e 'const p = require(process.argv[1] + "/package.json"); console.log(`==== ${p.name} ${p.version} (${p.license})`)' "$dir" >> "$out"
  cat "$dir"/LICEN[CS]E* >> "$out" 2>/dev/null || echo "(no licence file in the package)" >> "$out"
  echo >> "$out"
done
ls -l ../../mmviz/web/map/
