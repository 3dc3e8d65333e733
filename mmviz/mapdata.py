"""The data behind the WebGL embedding map (the `mmviz.map` Streamlit component, app/embedding_map.py).

Everything here is plain numpy/pyarrow so it is testable without Streamlit or a browser:
fitting positions into the renderer's normalised device coordinates (NDC) without distorting
them, encoding colour categories and continuous values, packing points, pair lines and
selections as compact Arrow tables, and decoding the selections the browser sends back.

regl-scatterplot (the renderer) wants positions in [-1, 1]; it keeps the data's aspect ratio
as long as both axes share one scale, so `MapFrame` centres the bounding box and divides by
half its longer side: the longer axis spans exactly [-1, 1], the shorter one is centred.
"""
from __future__ import annotations

import base64
import hashlib
import math
import re
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

# Pair lines are drawn on a 2-D canvas each time the view moves; past this many segments a
# pan stutters in software GL, so the page should pass a sample or the selection's lines.
MAX_LINES = 200_000
# The JS side reads categories as an unsigned typed array; 65,535 categories is far past any
# legend anyone can read, so larger codes are a caller bug.
MAX_CATEGORIES = 65_535
_HEX = re.compile(r"^#(?:[0-9a-fA-F]{3}|[0-9a-fA-F]{6}|[0-9a-fA-F]{8})$")


@dataclass(frozen=True)
class MapFrame:
    """The shared-scale map from data coordinates to the renderer's NDC: ndc = (xy - centre) / half."""

    centre: tuple[float, float]
    half: float

    @classmethod
    def fit(cls, xy: np.ndarray) -> "MapFrame":
        """The frame whose longer side spans [-1, 1] for the finite (n, 2) positions `xy`."""
        xy = check_positions(xy)
        if len(xy) == 0:
            return cls((0.0, 0.0), 1.0)
        # per column: numpy reduces a contiguous column ~20x faster than axis 0 of (n, 2)
        (x0, x1), (y0, y1) = [(float(xy[:, j].min()), float(xy[:, j].max())) for j in (0, 1)]
        half = max(x1 - x0, y1 - y0) / 2
        return cls(((x0 + x1) / 2, (y0 + y1) / 2), half if half > 0 else 1.0)

    def to_ndc(self, xy: np.ndarray) -> np.ndarray:
        """(n, 2) data positions as float32 NDC (computed in float64, then rounded once)."""
        xy = np.asarray(xy).reshape(-1, 2)
        out = np.empty(xy.shape, np.float32)
        for j in (0, 1):
            out[:, j] = (xy[:, j].astype(np.float64) - self.centre[j]) / self.half
        return out

    def from_ndc(self, ndc: np.ndarray) -> np.ndarray:
        """The inverse of `to_ndc` (float64): what a screen region in NDC covers in data units."""
        return np.asarray(ndc, dtype=np.float64).reshape(-1, 2) * self.half + np.asarray(self.centre)


def check_positions(xy: np.ndarray) -> np.ndarray:
    """`xy` as an (n, 2) float array, or a ValueError naming the first bad row."""
    xy = np.asarray(xy)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise ValueError(f"map positions must have shape (n, 2), got {xy.shape}; pass a 2-D projection")
    if not np.issubdtype(xy.dtype, np.number):
        raise ValueError(f"map positions must be numbers, got dtype {xy.dtype}")
    if not np.isfinite(xy).all():  # the cheap whole-array check first; rows only on failure
        bad = ~np.isfinite(xy).all(1)
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(f"map position row {row} is not finite ({xy[row].tolist()}); "
                         f"{int(bad.sum())} rows are NaN/inf: drop or impute them before drawing")
    return xy


def encode_categories(category: np.ndarray, n: int, categories: Sequence[str],
                      colours: Sequence[str]) -> np.ndarray:
    """Category codes as the smallest unsigned dtype that holds them (uint8 up to 256 labels),
    after checking there is one code per point, one label and one hex colour per category."""
    k = len(categories)
    if k == 0 or k > MAX_CATEGORIES:
        raise ValueError(f"need 1 to {MAX_CATEGORIES:,} categories, got {k:,}")
    if len(colours) != k:
        raise ValueError(f"{k} categories but {len(colours)} colours: give one colour per category")
    for i, c in enumerate(colours):
        if not isinstance(c, str) or not _HEX.match(c):
            raise ValueError(f"colour {i} ({c!r}) is not a hex colour like '#1f77b4'")
    codes = np.asarray(category)
    if codes.shape != (n,):
        raise ValueError(f"category must have one entry per point, shape ({n},), got {codes.shape}")
    if n and not np.issubdtype(codes.dtype, np.integer):
        if not np.issubdtype(codes.dtype, np.floating) or not np.array_equal(codes, np.round(codes)):
            raise ValueError(f"category codes must be integers 0..{k - 1}, got dtype {codes.dtype}")
    if n:
        bad = (codes < 0) | (codes >= k)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise ValueError(f"category of point {row} is {codes[row]}, outside 0..{k - 1} "
                             f"(labels: {list(categories)[:5]}...)")
    return codes.astype(np.uint8 if k <= 256 else np.uint16)


def scale_values(values: np.ndarray, n: int) -> tuple[np.ndarray, float, float]:
    """Continuous values min-max scaled to float32 [0, 1] (the colormap's domain), with the
    original (min, max) for the legend. A constant column maps to 0."""
    v = np.asarray(values, dtype=np.float64)
    if v.shape != (n,):
        raise ValueError(f"values must have one entry per point, shape ({n},), got {v.shape}")
    bad = ~np.isfinite(v)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(f"value of point {row} is {v[row]}; colour by a column without NaN/inf")
    if n == 0:
        return v.astype(np.float32), 0.0, 0.0
    lo, hi = float(v.min()), float(v.max())
    scaled = (v - lo) / (hi - lo) if hi > lo else np.zeros_like(v)
    return scaled.astype(np.float32), lo, hi


def check_lines(lines: np.ndarray | None, n: int) -> np.ndarray | None:
    """Line segments as an (m, 2) uint32 array of point-index pairs, each index in 0..n-1."""
    if lines is None:
        return None
    seg = np.asarray(lines)
    if seg.size == 0:
        return np.zeros((0, 2), np.uint32)
    if seg.ndim != 2 or seg.shape[1] != 2:
        raise ValueError(f"lines must have shape (m, 2) (pairs of point indices), got {seg.shape}")
    if not np.issubdtype(seg.dtype, np.integer):
        raise ValueError(f"line indices must be integers, got dtype {seg.dtype}")
    if len(seg) > MAX_LINES:
        raise ValueError(f"{len(seg):,} lines is more than the map draws smoothly ({MAX_LINES:,}); "
                         "pass a sample, or the lines of the selected pairs")
    bad = (seg < 0).any(1) | (seg >= n).any(1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(f"line {row} joins points {seg[row].tolist()}, but the map has {n:,} points (0..{n - 1})")
    return seg.astype(np.uint32)


def check_indices(indices: np.ndarray | Sequence[int] | None, n: int, what: str = "selected") -> np.ndarray | None:
    """Point indices as a sorted, de-duplicated uint32 array within 0..n-1 (None stays None)."""
    if indices is None:
        return None
    idx = np.asarray(indices)
    if idx.size == 0:
        return np.zeros(0, np.uint32)
    if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"{what} must be a 1-D array of integer point indices, got {idx.dtype} {idx.shape}")
    bad = (idx < 0) | (idx >= n)
    if bad.any():
        raise ValueError(f"{what} index {idx[bad][0]} is outside the map's {n:,} points")
    return np.unique(idx).astype(np.uint32)


def default_point_size(n: int) -> float:
    """Point diameter in CSS pixels: 6 px for a thousand points down to 2 px from a million,
    so a dense map stays readable instead of a solid blob."""
    return float(np.clip(10.0 - 1.3 * math.log10(max(n, 1)), 2.0, 8.0))


def points_table(ndc: np.ndarray, codes: np.ndarray, values01: np.ndarray | None = None) -> pa.Table:
    """The points as one Arrow record batch: x, y float32 NDC, c category code, v in [0, 1].
    9 bytes per point (13 with values); the browser reads each column as a typed array."""
    cols = {"x": pa.array(np.ascontiguousarray(ndc[:, 0])), "y": pa.array(np.ascontiguousarray(ndc[:, 1])),
            "c": pa.array(codes)}
    if values01 is not None:
        cols["v"] = pa.array(np.asarray(values01, np.float32))
    return pa.table(cols)


def index_table(indices: np.ndarray, names: Sequence[str]) -> pa.Table:
    """uint32 index columns (pair lines: a, b; a selection: i) as an Arrow table."""
    idx = np.asarray(indices, np.uint32).reshape(len(indices), len(names))
    return pa.table({name: pa.array(np.ascontiguousarray(idx[:, j])) for j, name in enumerate(names)})


def digest(*arrays: np.ndarray | None) -> str:
    """A short content hash: the browser redraws the points only when this changes."""
    h = hashlib.blake2b(digest_size=8)
    for a in arrays:
        if a is not None:
            a = np.ascontiguousarray(a)
            h.update(str((a.dtype.str, a.shape)).encode())
            h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def continuous_colours() -> list[str]:
    """Viridis as hex stops for continuous colouring (perceptually even, readable on white)."""
    from plotly.colors import sequential

    return list(sequential.Viridis)


def category_colours(k: int) -> list[str]:
    """k distinct hex colours for colouring by a table column: D3's ten (image blue, caption
    orange first, as in the plotly figures), then Dark24 and Alphabet; repeats past 60."""
    from plotly.colors import qualitative

    palette = list(dict.fromkeys(c.lower() for c in qualitative.D3 + qualitative.Dark24 + qualitative.Alphabet))
    return [palette[i % len(palette)] for i in range(k)]


def legend_counts(codes: np.ndarray, k: int) -> list[int]:
    """How many points each category has (shown in the legend)."""
    return np.bincount(codes, minlength=k).astype(int).tolist()


def decode_selection(payload: Any, n: int) -> np.ndarray | None:
    """The indices of one selection event sent by the browser, or None when there was none.

    The browser sends {"n": count, "b64": base64 of little-endian uint32 indices} (a 1M-point
    lasso is 5 MB this way, and decodes in milliseconds); an empty array means the user
    cleared the selection. Returns sorted unique int64 indices, checked against `n`."""
    if payload is None:
        return None
    if not isinstance(payload, dict) or not isinstance(payload.get("b64"), str):
        raise ValueError(f"map selection payload must be {{'n': int, 'b64': str}}, got {type(payload).__name__}")
    raw = base64.b64decode(payload["b64"], validate=True)
    if len(raw) % 4:
        raise ValueError(f"map selection holds {len(raw)} bytes, not a whole number of uint32 indices")
    idx = np.frombuffer(raw, dtype="<u4").astype(np.int64)
    if "n" in payload and int(payload["n"]) != len(idx):
        raise ValueError(f"map selection says {payload['n']} points but carries {len(idx)}")
    if len(idx) and int(idx.max()) >= n:
        raise ValueError(f"map selection index {int(idx.max())} is outside the map's {n:,} points")
    return np.unique(idx)


def encode_selection(indices: np.ndarray) -> dict:
    """The inverse of `decode_selection` (what the browser sends); used by tests and demos."""
    idx = np.asarray(indices, dtype="<u4")
    return {"n": len(idx), "b64": base64.b64encode(idx.tobytes()).decode("ascii")}


def check_hover_detail(detail: dict | None) -> dict | None:
    """A hover detail the tooltip can show: index, title, text and an optional image data URI."""
    if detail is None:
        return None
    if not isinstance(detail, dict) or "index" not in detail:
        raise ValueError("hover_detail must be a dict with at least 'index' (and 'title', 'text', 'image')")
    image = detail.get("image")
    if image is not None and not (isinstance(image, str) and image.startswith("data:image/")):
        raise ValueError("hover_detail['image'] must be a data:image/... URI (no remote URLs: the map works offline)")
    return {"index": int(detail["index"]), "title": str(detail.get("title") or ""),
            "text": str(detail.get("text") or ""), "image": image}


@dataclass
class MapPayload:
    """What the map element receives: `points` (big, rarely changes) and `config`. What changes
    often (lines and selection: `build_marks`; the hover detail: `build_hover`) travels in two
    small elements of their own, so this one's message stays byte-identical across reruns."""

    points: pa.Table
    config: dict
    frame: MapFrame


def _ndc_bbox(ndc: np.ndarray) -> list[float]:
    """left, bottom, right, top of the points in NDC (what "Reset view" fits)."""
    return [float(ndc[:, 0].min()), float(ndc[:, 1].min()), float(ndc[:, 0].max()), float(ndc[:, 1].max())]


def build_map(xy: np.ndarray, category: np.ndarray, categories: Sequence[str], colours: Sequence[str], *,
              values: np.ndarray | None = None, value_label: str = "value",
              arrow: tuple | None = None, point_size: float | None = None, height: int = 640,
              target: str = "map") -> MapPayload:
    """Check and pack one map: positions fitted to NDC, codes, optional values, the gap arrow."""
    frame = MapFrame.fit(xy)  # checks xy
    n = len(xy)
    ndc = frame.to_ndc(xy)
    codes = encode_categories(category, n, categories, colours)
    values01, vrange = None, None
    if values is not None:
        values01, lo, hi = scale_values(values, n)
        vrange = [lo, hi]
    config: dict[str, Any] = {
        "target": target, "n": n, "height": int(height),
        "token": digest(ndc, codes, values01),
        "categories": [str(c) for c in categories], "colours": list(colours),
        "counts": legend_counts(codes, len(categories)),
        "colour_by": "value" if values is not None else "category",
        "point_size": float(point_size) if point_size else default_point_size(n),
        "bbox": _ndc_bbox(ndc) if n else [-1.0, -1.0, 1.0, 1.0],
    }
    if values is not None:
        config.update(value_range=vrange, value_label=value_label, colormap=continuous_colours())
    if arrow is not None:
        from mmviz.viz import IMAGE_COLOUR, TEXT_COLOUR  # the app's modality colours, as in plotly

        (x0, y0), (x1, y1) = arrow
        ends = frame.to_ndc(np.array([[x0, y0], [x1, y1]], np.float64))
        if not np.isfinite(ends).all():
            raise ValueError(f"the gap arrow's ends must be finite, got {arrow}")
        config["arrow"] = {"from": ends[0].tolist(), "to": ends[1].tolist(),
                           "labels": ["text centre", "image centre"], "colours": [TEXT_COLOUR, IMAGE_COLOUR]}
    return MapPayload(points_table(ndc, codes, values01), config, frame)


def build_marks(n: int, *, target: str, lines: np.ndarray | None = None,
                selected: np.ndarray | Sequence[int] | None = None) -> dict:
    """The pair lines and the highlighted selection: change with the selection, not per hover.

    Each is an Arrow table (Streamlit sends top-level tables as binary blobs) or None; the
    tokens let the browser skip re-applying what did not change."""
    seg = check_lines(lines, n)
    sel = check_indices(selected, n)
    return {"overlay_for": target,
            "lines": index_table(seg, ("a", "b")) if seg is not None else None,
            "lines_token": digest(seg) if seg is not None else None,
            "selected": index_table(sel, ("i",)) if sel is not None else None,
            "selected_token": digest(sel) if sel is not None else None}


def build_hover(*, target: str, detail: dict | None) -> dict:
    """The hovered point's detail: the only thing a hover rerun sends (a few hundred bytes plus
    the thumbnail)."""
    return {"overlay_for": target, "hover": check_hover_detail(detail)}


# --- Image-caption pairs (the Gap explorer's layout) as map inputs, and back.

PAIR_CATEGORIES = ["image", "caption"]


@dataclass
class PairsLayout:
    """Images then captions as one point set: image i is point i, caption j is n_images + j."""

    xy: np.ndarray          # (n_images + n_captions, 2)
    category: np.ndarray    # 0 image, 1 caption
    lines: np.ndarray       # (m, 2) image point, caption point
    arrow: tuple            # (caption centre, image centre): the gap
    n_images: int


def pairs_layout(image_xy: np.ndarray, text_xy: np.ndarray, text_owner: np.ndarray,
                 max_lines: int = 20_000) -> PairsLayout:
    """Stack a 2-D layout of images and captions for `embedding_map`; caption j belongs to image
    text_owner[j]. Pair lines join the first `max_lines` captions to their images."""
    image_xy, text_xy = np.asarray(image_xy), np.asarray(text_xy)
    owner = np.asarray(text_owner)
    ni, nt = len(image_xy), len(text_xy)
    if owner.shape != (nt,):
        raise ValueError(f"text_owner must give one image per caption, shape ({nt},), got {owner.shape}")
    if nt and (owner.min() < 0 or owner.max() >= ni):
        raise ValueError(f"text_owner refers to image {int(owner.max())}, but there are {ni} images")
    m = min(nt, max_lines, MAX_LINES)
    return PairsLayout(
        xy=np.concatenate([image_xy, text_xy]),
        category=np.r_[np.zeros(ni, np.uint8), np.ones(nt, np.uint8)],
        lines=np.c_[owner[:m], ni + np.arange(m)],
        arrow=(tuple(text_xy.mean(0).tolist()), tuple(image_xy.mean(0).tolist())),
        n_images=ni)


def picked_images(selection: np.ndarray, n_images: int, text_owner: np.ndarray) -> np.ndarray:
    """The images a map selection picks: selected images, and the images of selected captions."""
    sel = np.asarray(selection, np.int64)
    return np.unique(np.r_[sel[sel < n_images], np.asarray(text_owner)[sel[sel >= n_images] - n_images]])


def pair_points(images: np.ndarray, n_images: int, text_owner: np.ndarray) -> np.ndarray:
    """The map points of `images` and all their captions (to pass as `selected=`)."""
    images = np.asarray(images, np.int64)
    captions = np.flatnonzero(np.isin(text_owner, images))
    return np.r_[images, n_images + captions]
