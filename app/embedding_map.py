"""The WebGL embedding map as one Streamlit call: `embedding_map(...)` -> MapEvent.

Millions of points with pan/zoom, lasso and box selection, hover details fetched from Python
one point at a time, pair lines and the gap arrow. The drawing is regl-scatterplot (WebGL) in
a Streamlit custom component (v2) whose bundle ships in mmviz/web/map/; the checking and
packing is mmviz.mapdata (pure Python, unit-tested).

Use it inside an `st.fragment`, so a hover or a selection reruns only the fragment::

    @st.fragment
    def gap_map():
        ev = embedding_map(xy, modality, ["image", "caption"], [IMAGE_COLOUR, TEXT_COLOUR],
                           lines=pairs, arrow=(text_centre, image_centre),
                           selected=st.session_state.get("picked"),
                           hover_detail=lambda i: {"index": i, "title": ..., "text": ..., "image": ...},
                           key="gap-map")
        if ev.selection is not None:          # a new lasso/box/click selection (empty = cleared)
            st.session_state.picked = ev.selection
            st.rerun(scope="fragment")        # draw the highlight and list it now
        ...list the picked pairs...

(mmviz.mapdata.pairs_layout / picked_images / pair_points turn the Gap page's images and
captions into these arguments and a selection back into image rows; see NOTES-webgl-map.md.)

Three elements are mounted: the map (points, colours, arrow: big, re-sent only when they
change) and two zero-height relays, one for the pair lines and highlighted selection, one for
the hover detail. Streamlit re-sends an unchanged element as a short cache reference, so a
hover rerun moves about a kilobyte over the websocket (plus the thumbnail), not the points.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import streamlit as st
from streamlit.errors import StreamlitAPIException

from mmviz import mapdata

COMPONENT = "mmviz.map"  # "<project>.<component>" as declared in mmviz/pyproject.toml
BUNDLE = Path(mapdata.__file__).parent / "web" / "map"


def _register():
    """The component, served from its asset_dir when Streamlit found the manifest (the browser
    fetches map.js once and caches it), else with the bundle passed inline (mmviz importable
    but not pip-installed: no manifest to find; ~230 kB then rides in each map message)."""
    try:
        return st.components.v2.component(COMPONENT, js="map.js", css="map.css", isolate_styles=False)
    except StreamlitAPIException:
        # Streamlit treats a one-line string containing "/" as a file path; minified code is
        # one line, so each gets a closing comment line to be read as inline content.
        inline = lambda name: (BUNDLE / name).read_text() + "\n/* mmviz map, inline */"  # noqa: E731
        return st.components.v2.component(COMPONENT, js=inline("map.js"), css=inline("map.css"),
                                          isolate_styles=False)


_component = _register()


def _ignore() -> None:
    """A no-op callback: registering on_<name>_change is what makes the component report <name>."""


@dataclass
class MapEvent:
    """What the user did on the map during this run.

    selection: the point indices (sorted int64) of a lasso/box/click selection made since the
        last run, an empty array when the user cleared it (double-click, Escape), and None when
        nothing happened to the selection; keep it in session state if the page needs it later.
    hover: the index of the point the pointer last rested on (reported after it stays ~150 ms),
        or None before any.
    shown: whether the browser has drawn these points (or shown why it cannot). A page may hold
        back heavy elements until then: in a fresh tab they compete with the map for the
        browser's one main thread (plotly's figures delayed a 200k-point map by 1.5 to 2 s).
    """

    selection: np.ndarray | None
    hover: int | None
    shown: bool = False


def embedding_map(xy: np.ndarray, category: np.ndarray, categories: list[str], colours: list[str], *,
                  values: np.ndarray | None = None, value_label: str = "value",
                  lines: np.ndarray | None = None, arrow: tuple | None = None,
                  selected: np.ndarray | None = None,
                  hover_detail: Callable[[int], dict | None] | dict | None = None,
                  point_size: float | None = None, height: int = 640, key: str) -> MapEvent:
    """Draw `xy` (n, 2) points (any scale; the aspect ratio is kept) coloured by `category`
    (codes into `categories`/`colours`, shown in the legend) or, when `values` is given, by a
    continuous value (viridis, legend titled `value_label`).

    lines: (m, 2) point-index pairs drawn as grey segments (up to mapdata.MAX_LINES).
    arrow: ((x0, y0), (x1, y1)) in data units: the gap arrow from the text centre to the image
        centre, drawn on top with those labels.
    selected: indices drawn highlighted (red) and the rest faded; None leaves the map's own
        selection as the user made it, an empty array clears it.
    hover_detail: a function index -> {"index", "title", "text", "image": data URI or None},
        called only for the hovered point (or such a dict); shown in the tooltip.
    point_size: pixels (default: 6 px for 1k points down to 2 px from 1M).
    key: required; names the map (two maps on a page need two keys).
    """
    n = len(xy)
    payload = mapdata.build_map(xy, category, categories, colours, values=values, value_label=value_label,
                                arrow=arrow, point_size=point_size, height=height, target=key)
    box = st.container(gap=None)  # the overlay element adds no gap below the map
    with box:
        state = _component(key=key, data={"points": payload.points, "config": payload.config},
                           height="content", on_selection_change=_ignore, on_hover_change=_ignore,
                           on_shown_change=_ignore)
        hover = state.get("hover")
        hover = int(hover) if isinstance(hover, (int, float)) and 0 <= hover < n else None
        detail = hover_detail(hover) if callable(hover_detail) and hover is not None else hover_detail
        if callable(detail):
            detail = None
        _component(key=f"{key}-marks", height="content",
                   data=mapdata.build_marks(n, target=key, lines=lines, selected=selected))
        _component(key=f"{key}-hover", height="content", data=mapdata.build_hover(target=key, detail=detail))
    return MapEvent(selection=mapdata.decode_selection(state.get("selection"), n), hover=hover,
                    shown=state.get("shown") == payload.config["token"])
