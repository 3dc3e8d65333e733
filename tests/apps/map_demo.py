"""A tiny Streamlit app around the WebGL embedding map, for browser tests and benchmarks.

MAP_N points (default 100k): half "images" in a few clusters, half "captions" shifted by a
gap, plus landmarks the tests aim at (`layout`): an empty moat around box BOX_REGION, an
isolated cluster for the lasso, an isolated point for the hover. MAP_COLOUR=value colours by
a continuous value instead of modality. Selections are written to the page as count + md5.
MAP_RENDERER=plotly draws the same points with the Gap page's plotly figure instead (the
benchmark's baseline, bench/map_draw.py).
"""
from __future__ import annotations

import base64
import hashlib
import io
import os
import sys
import time
from pathlib import Path

import numpy as np

BOX_REGION = (0.3, -0.2, 1.1, 0.5)   # x0, y0, x1, y1 in data units
MOAT = 0.06                           # no point within this distance of the box's border
CLUSTER_CENTRE, CLUSTER_N, CLUSTER_R = (-1.55, 0.75), 40, 0.04
HOVER_POINT = (1.7, -0.75)
IMAGE_COLOUR, TEXT_COLOUR = "#1f77b4", "#ff7f0e"


def _in_landmarks(xy: np.ndarray) -> np.ndarray:
    """Points within MOAT of the box's border, or near the lasso cluster or the hover point."""
    x0, y0, x1, y1 = BOX_REGION
    dx = np.maximum(x0 - xy[:, 0], xy[:, 0] - x1)
    dy = np.maximum(y0 - xy[:, 1], xy[:, 1] - y1)
    border = np.where((dx <= 0) & (dy <= 0), -np.maximum(dx, dy), np.hypot(np.maximum(dx, 0), np.maximum(dy, 0)))
    return ((border < MOAT) | (np.hypot(*(xy - CLUSTER_CENTRE).T) < 0.3)
            | (np.hypot(*(xy - HOVER_POINT).T) < 0.2))


def layout(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict]:
    """(xy, modality, landmarks): n points with modality 0 = image (first half), 1 = caption."""
    rng = np.random.default_rng(seed)
    half = n // 2
    centres = rng.uniform([-1.6, -0.7], [0.2, 0.7], size=(6, 2))
    img = centres[rng.integers(0, 6, half)] + rng.normal(0, 0.22, (half, 2))
    txt = img + np.array([1.0, 0.15]) + rng.normal(0, 0.12, (half, 2))
    xy = np.concatenate([img, txt])
    bad = _in_landmarks(xy)
    while bad.any():  # re-draw points that fall into a landmark's clear zone (keeps n exact)
        k = int(bad.sum())
        xy[bad] = (centres[rng.integers(0, 6, k)] + rng.normal(0, 0.22, (k, 2))
                   + np.outer(np.flatnonzero(bad) >= half, [1.0, 0.15]))
        bad = _in_landmarks(xy)
    landmarks = {}
    # the lasso cluster: captions at the end of the caption half; the hover point: the last image
    cl = np.arange(n - CLUSTER_N, n)
    ang = np.linspace(0, 2 * np.pi, CLUSTER_N, endpoint=False)
    xy[cl] = np.asarray(CLUSTER_CENTRE) + CLUSTER_R * np.c_[np.cos(ang), np.sin(ang)] * np.linspace(0.2, 1, CLUSTER_N)[:, None]
    landmarks["cluster"] = cl
    landmarks["hover"] = half - 1
    xy[half - 1] = HOVER_POINT
    modality = (np.arange(n) >= half).astype(np.uint8)
    return xy.astype(np.float32), modality, landmarks


def thumbnail(i: int) -> str:
    from PIL import Image

    im = Image.new("RGB", (48, 48), (int(i * 37 % 255), 90, 200))
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def selection_digest(idx: np.ndarray) -> str:
    return hashlib.md5(np.asarray(idx, np.int64).tobytes()).hexdigest()[:12]


def main() -> None:
    import streamlit as st

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from app.embedding_map import embedding_map

    st.set_page_config(page_title="map demo", layout="wide")
    n = int(os.environ.get("MAP_N", "100000"))

    @st.cache_data
    def data(n):
        return layout(n)

    xy, modality, marks = data(n)
    half = n // 2
    pairs = np.c_[np.arange(min(2000, half)), half + np.arange(min(2000, half))]
    arrow = (tuple(xy[half:].mean(0)), tuple(xy[:half].mean(0)))

    if os.environ.get("MAP_RENDERER") == "plotly":
        from mmviz.viz import pair_hover, pairs_figure

        owner = np.arange(half)
        hover = pair_hover([f"img{i}" for i in range(half)], [f"caption of point {i}" for i in owner], owner)
        st.plotly_chart(pairs_figure(xy[:half], xy[half:], owner, hover=hover, height=560))
        return

    @st.fragment
    def panel():
        by_value = st.toggle("Colour by x·y", value=os.environ.get("MAP_COLOUR") == "value")
        values = xy[:, 0] * xy[:, 1] if by_value else None
        t0 = time.perf_counter()
        ev = embedding_map(
            xy, modality, ["image", "caption"], [IMAGE_COLOUR, TEXT_COLOUR], values=values, value_label="x·y",
            lines=pairs, arrow=arrow, selected=st.session_state.get("picked"),
            hover_detail=lambda i: {"index": i, "title": f"Point {i}", "text": f"caption of point {i}",
                                    "image": thumbnail(i) if modality[i] == 0 else None},
            height=560, key="demo-map")
        call_ms = (time.perf_counter() - t0) * 1000
        if ev.selection is not None:
            st.session_state.picked = ev.selection
            st.session_state.selections = st.session_state.get("selections", 0) + 1
            st.rerun(scope="fragment")  # draw the new highlight now, not on the next interaction
        picked = st.session_state.get("picked")
        if picked is not None:
            st.write(f"selection #{st.session_state.selections}: {len(picked)} points, "
                     f"md5 {selection_digest(picked)}, first {picked[:5].tolist()}")
        st.session_state.runs = st.session_state.get("runs", 0) + 1
        st.write(f"hover: {ev.hover}")
        st.caption(f"fragment runs: {st.session_state.runs}; embedding_map call {call_ms:.0f} ms")

    panel()


if __name__ == "__main__":
    main()
