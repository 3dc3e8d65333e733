"""Plotly figures of images and captions in a 2-D or 3-D layout (used by the app's pages)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

IMAGE_COLOUR, TEXT_COLOUR, PICK_COLOUR = "#1f77b4", "#ff7f0e", "#d62728"
MAX_LINES = 3000  # partner lines drawn at most (more is unreadable and slow)


def pair_hover(ids: Sequence[str], captions: Sequence[str], text_owner: np.ndarray) -> tuple[list[str], list[str]]:
    """Hover texts: each image with its first caption, each caption with its image's id."""
    first = np.unique(text_owner, return_index=True)[1]
    img = [f"image {i}<br>{captions[j][:80]}" for i, j in zip(ids, first)]
    txt = [f"caption of {ids[o]}<br>{c[:80]}" for c, o in zip(captions, text_owner)]
    return img, txt


def coords(a: np.ndarray) -> dict:
    """x, y (and z) keyword arguments for a plotly scatter of rows of a."""
    a = np.asarray(a)
    return dict(x=a[:, 0], y=a[:, 1], z=a[:, 2]) if a.shape[1] == 3 else dict(x=a[:, 0], y=a[:, 1])


def scatter_type(dims: int):
    return go.Scatter3d if dims == 3 else go.Scatter


def unit_sphere(fig: go.Figure) -> None:
    """A faint unit sphere behind 3-D points, so a spherical layout reads as a globe."""
    u, v = np.mgrid[0:2 * np.pi:30j, 0:np.pi:15j]
    fig.add_trace(go.Surface(x=np.cos(u) * np.sin(v) * 0.98, y=np.sin(u) * np.sin(v) * 0.98, z=np.cos(v) * 0.98,
                             opacity=0.08, showscale=False, colorscale=[[0, "#888"], [1, "#888"]],
                             hoverinfo="skip", name="sphere"))


def pairs_figure(image_xy: np.ndarray, text_xy: np.ndarray, text_owner: np.ndarray, *,
                 hover: tuple[list[str], list[str]] | None = None, sphere: bool = False, lines: bool = True,
                 picked: Sequence[int] = (), height: int = 640, title: str | None = None) -> go.Figure:
    """Images (blue) and captions (orange) of one layout, grey lines joining each caption to
    its image, the gap as an arrow from the caption centre to the image centre (on a sphere,
    between their directions), and `picked` image rows with their captions in red.

    Trace order is fixed (pick handlers rely on it): [pair lines], images, captions, then
    highlights and centroids."""
    xi, xt = np.asarray(image_xy), np.asarray(text_xy)
    dims = xi.shape[1]
    scatter, size = scatter_type(dims), (3 if dims == 3 else 6)
    img_hover, txt_hover = hover if hover is not None else (None, None)
    fig = go.Figure()
    if sphere:
        unit_sphere(fig)
    if lines:
        owners = np.asarray(text_owner)[:MAX_LINES]
        seg = np.full((3 * len(owners), dims), np.nan)
        seg[0::3], seg[1::3] = xi[owners], xt[:len(owners)]
        fig.add_trace(scatter(**coords(seg), mode="lines", line=dict(color="rgba(120,120,120,0.25)", width=1),
                              hoverinfo="skip", name="pairs"))
    fig.add_trace(scatter(**coords(xi), mode="markers", marker=dict(size=size, color=IMAGE_COLOUR, opacity=0.75),
                          name=f"images ({len(xi):,})", hovertext=img_hover, hoverinfo="text" if img_hover else None))
    fig.add_trace(scatter(**coords(xt), mode="markers", marker=dict(size=size, color=TEXT_COLOUR, opacity=0.75),
                          name=f"captions ({len(xt):,})", hovertext=txt_hover, hoverinfo="text" if txt_hover else None))
    if len(picked):
        partners = np.flatnonzero(np.isin(text_owner, picked))
        fig.add_trace(scatter(**coords(xi[list(picked)]), mode="markers", name="selected images",
                              marker=dict(size=size + 6, color=PICK_COLOUR, symbol="circle-open" if dims == 2 else "circle")))
        fig.add_trace(scatter(**coords(xt[partners]), mode="markers", name="their captions",
                              marker=dict(size=size + 6, color=PICK_COLOUR, symbol="diamond-open" if dims == 2 else "diamond")))
    ci, ct = xi.mean(0), xt.mean(0)
    if sphere:
        ci, ct = ci / max(np.linalg.norm(ci), 1e-12), ct / max(np.linalg.norm(ct), 1e-12)
    if dims == 2:
        fig.add_annotation(x=ci[0], y=ci[1], ax=ct[0], ay=ct[1], xref="x", yref="y", axref="x", ayref="y",
                           arrowhead=3, arrowsize=1.5, arrowwidth=3, arrowcolor="black", text="")
        fig.add_trace(go.Scatter(x=[ct[0], ci[0]], y=[ct[1], ci[1]], mode="markers+text", name="centroids",
                                 text=["text centre", "image centre"], textposition="top center",
                                 marker=dict(size=12, color=[TEXT_COLOUR, IMAGE_COLOUR], line=dict(width=2, color="black"))))
    else:
        fig.add_trace(go.Scatter3d(x=[ct[0], ci[0]], y=[ct[1], ci[1]], z=[ct[2], ci[2]], mode="lines+markers+text",
                                   text=["text centre", "image centre"], name="gap", line=dict(color="black", width=6),
                                   marker=dict(size=7, color=[TEXT_COLOUR, IMAGE_COLOUR])))
    fig.update_layout(height=height, margin=dict(l=0, r=0, t=40 if title else 30, b=0), title=title,
                      legend=dict(orientation="h", y=-0.05, yanchor="top"), dragmode="lasso" if dims == 2 else "orbit")
    if dims == 2:
        fig.update_yaxes(scaleanchor="x", scaleratio=1)
    return fig


def same_ranges(*figs: go.Figure, points: Sequence[np.ndarray], pad: float = 0.05) -> None:
    """Give 2-D (or 3-D) figures one shared set of axis ranges covering `points`, so a
    before/after pair is read on the same scale."""
    allp = np.concatenate([np.asarray(p) for p in points])
    lo, hi = np.nanmin(allp, 0), np.nanmax(allp, 0)
    span = np.maximum(hi - lo, 1e-9)
    lo, hi = lo - pad * span, hi + pad * span
    for fig in figs:
        if allp.shape[1] == 2:  # without the 1:1 anchor, which would stretch each figure its own way
            fig.update_xaxes(range=[lo[0], hi[0]])
            fig.update_yaxes(range=[lo[1], hi[1]], scaleanchor=None)
        else:
            fig.update_scenes(xaxis_range=[lo[0], hi[0]], yaxis_range=[lo[1], hi[1]], zaxis_range=[lo[2], hi[2]],
                              aspectmode="cube")
