"""The report's sections: one function each, taking the Context and returning the section's
body as HTML (its heading is added by the caller). A section that does not apply to this set
or model raises Skip with the reason, which the report shows in place of its body.

The heavy numbers go through the workspace's result caches with the same keys as the app's
pages (mmviz.results, mmviz.derived, the layout cache), so a report after a session in the app,
or a second report, reuses them."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .page import Figures, Markup, definition_list, esc, img, note, num, para, plot_text, png_uri, table

GAP_IMAGES = 5_000  # images the gap view draws at most (a seeded sample beyond), with their captions ...
GAP_CAPTIONS = 20_000  # ... and at most this many of their captions
LAYOUT_MAX_POINTS = 200_000  # above, the layout is fitted on the drawn sample (as the app's Transforms page does)
TRANSFORM_MAX_N = 2048  # pairs for the O(n^2) metrics of the before/after table (the Transforms page's)
WORST = 50  # worst pairs computed (the Retrieval page's number, so its cache is shared) ...
WORST_SHOWN = 20  # ... and shown
DEMO_MAX_IMAGES = 2_000  # images of a shapes-world set whose demo candidates are scored (the Captions page's)
CAPTIONER_METRICS = (("bleu4", "BLEU-4"), ("cider", "CIDEr"), ("rouge_l", "ROUGE-L"), ("clip_s", "CLIP-S"),
                     ("mid", "MID"), ("exact_match", "exact match"))


class Skip(Exception):
    """This section does not apply here; the message says why (shown in the report)."""


@dataclass
class Context:
    ws: object  # mmviz.store.Workspace
    ds: object  # mmviz.store.Dataset
    emb: object  # mmviz.embed.Embeddings
    model: str
    progress: Callable[[int, int, str], None] = lambda done, total, stage: None
    seed: int = 0
    figures: Figures = field(default_factory=Figures)
    _drawn: tuple | None = None
    _layout: object = None

    def stage(self, stage: str) -> Callable[[int, int], None]:
        """Announce a step; returns a progress(done, total) callback for it."""
        self.progress(0, 1, stage)
        return lambda done, total, *_: self.progress(done, total, stage)

    @property
    def home(self):
        return self.ws.home

    def thumbnails(self, ids) -> dict[str, bytes]:
        ids = list(dict.fromkeys(str(i) for i in ids))
        return self.ds.thumbnails(ids=ids) if ids and self.ds.manifest.get("images") else {}

    # ---------------------------------------------------------------- the drawn sample and its layout

    def drawn(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(image rows, caption rows, owner of each drawn caption among the drawn images): every
        pair, or a seeded sample of GAP_IMAGES images with (at most GAP_CAPTIONS of) their captions."""
        if self._drawn is None:
            emb, rng = self.emb, np.random.default_rng(self.seed)
            owner = np.asarray(emb.text_owner)
            n = len(emb.ids)
            images = np.arange(n) if n <= GAP_IMAGES else np.sort(rng.choice(n, GAP_IMAGES, replace=False))
            captions = np.arange(len(owner)) if n <= GAP_IMAGES else np.flatnonzero(np.isin(owner, images))
            if len(captions) > GAP_CAPTIONS:
                captions = np.sort(rng.choice(captions, GAP_CAPTIONS, replace=False))
            self._drawn = images, captions, np.searchsorted(images, owner[captions])
        return self._drawn

    def sampled(self) -> bool:
        images, captions, _ = self.drawn()
        return len(images) < len(self.emb.ids) or len(captions) < len(self.emb.text)

    def layout(self):
        """The gap-axis layout (mmviz.projection, through the workspace's layout cache, keyed as
        the app's Gap explorer keys it): fitted on every point, or on the drawn sample of a set
        above LAYOUT_MAX_POINTS vectors. Returns (layout, xy of the drawn images, of the drawn captions)."""
        if self._layout is None:
            from ..arrays import gather_rows
            from ..projection import cached_layout

            emb = self.emb
            img_rows, cap_rows, _ = self.drawn()
            report = self.stage("gap: projecting onto the gap axis")
            step = lambda done, total, *_: report(done, total)  # noqa: E731
            if len(emb.ids) + len(emb.text) > LAYOUT_MAX_POINTS:
                parts = {**emb.key_parts, "sample": [len(img_rows), len(cap_rows)], "seed": self.seed}
                layout, _ = cached_layout(self.ws, parts, gather_rows(emb.image, img_rows),
                                          gather_rows(emb.text, cap_rows), "gap2", None, self.seed, progress=step)
                xy = (np.asarray(layout.image_xy), np.asarray(layout.text_xy))
            else:
                parts = {"dataset": self.ds.manifest["content_hash"], "model": emb.fingerprint}
                layout, _ = cached_layout(self.ws, parts, emb.image, emb.text, "gap2", None, self.seed, progress=step,
                                          identifies_data=True)
                xy = (np.asarray(layout.image_xy)[img_rows], np.asarray(layout.text_xy)[cap_rows])
            self._layout = (layout, *xy)
        return self._layout

    def sample_note(self, what: str = "The figure") -> Markup | str:
        img_rows, cap_rows, _ = self.drawn()
        if not self.sampled():
            return ""
        return note(f"{what} shows a seeded sample (seed {self.seed}): {len(img_rows):,} of the {len(self.emb.ids):,} "
                    f"images and {len(cap_rows):,} of the {len(self.emb.text):,} captions, each caption with its "
                    "image. The numbers use every pair.")


def _hover(ctx: Context) -> tuple[list[str], list[str]]:
    """Hover texts, escaped: plotly reads hover text as HTML (it shows entities as characters)."""
    emb = ctx.emb
    img_rows, cap_rows, owner = ctx.drawn()
    first = {}
    for j in cap_rows:
        first.setdefault(int(emb.text_owner[j]), j)
    images = [f"image {plot_text(emb.ids[r])}<br>"
              f"{plot_text(emb.captions[first[int(r)]][:80]) if int(r) in first else ''}" for r in img_rows]
    captions = [f"caption of {plot_text(emb.ids[emb.text_owner[j]])}<br>{plot_text(emb.captions[j][:80])}"
                for j in cap_rows]
    return images, captions


# ---------------------------------------------------------------------------------------- sections


def summary(ctx: Context, made: str) -> Markup:
    from .. import __version__

    ds, emb, m = ctx.ds, ctx.emb, ctx.ds.manifest
    facts = [
        ("Dataset", ds.name), ("Source", m.get("source", "")), ("Format", m.get("format", "")),
        ("Imported", m.get("created", "")), ("Pairs", f"{m['pairs']:,}"), ("Captions", f"{m['captions']:,}"),
        ("Images", f"{m['images']:,} ({m.get('images_stored', '')})"),
        ("Rows skipped at import", f"{len(ds.report.skipped):,}"), ("Dataset version", m["content_hash"]),
        ("Model", ctx.model), ("Vectors from", emb.model), ("Model fingerprint", emb.fingerprint),
        ("Embedded", f"{len(emb.ids):,} images and {len(emb.text):,} captions, {emb.dim}-d"
                     + (f"; {len(emb.skipped):,} images could not be embedded" if emb.skipped else "")),
        ("mmviz version", __version__), ("Report made", made),
    ]
    return Markup(definition_list(facts) + note(
        "The fingerprint names the model's weights (its spec and a hash of the weights file): two reports with the "
        "same dataset version and fingerprint show the same vectors."))


def gap(ctx: Context) -> Markup:
    from ..viz import MAX_LINES, pairs_figure

    emb = ctx.emb
    layout, image_xy, text_xy = ctx.layout()
    _, cap_rows, owner = ctx.drawn()
    fig = pairs_figure(image_xy, text_xy, owner, hover=_hover(ctx), lines=len(cap_rows) <= MAX_LINES, height=620,
                       title=f"{plot_text(ctx.ds.name)} on the gap axis")
    where = ("fitted on the drawn sample" if len(emb.ids) + len(emb.text) > LAYOUT_MAX_POINTS
             else "fitted on every image and caption")
    return Markup(
        para("Images (blue) and captions (orange) in one projection, fitted on both together so the distance between "
             "the modalities shows. Gap axis: x is the gap direction (from the caption centre to the image centre), "
             "y the main direction of variation across it; plain PCA often hides the gap because it is nearly "
             "orthogonal to how either modality varies. Grey lines join each image to its captions; the arrow is the "
             "gap, from the caption centre to the image centre.")
        + ctx.figures.add(fig, f"Gap axis layout, {where}.") + ctx.sample_note())


def metrics(ctx: Context) -> Markup:
    import plotly.graph_objects as go

    from .. import geometry, results
    from ..viz import PICK_COLOUR

    emb = ctx.emb
    report = ctx.stage("metrics: geometry of the embedding space")
    values, _ = results.metrics(ctx.home, emb, seed=ctx.seed, progress=lambda d, t, stage: report(d, t))
    rows = [(geometry.METRICS[k][0], num(v, 4), geometry.METRICS[k][1]) for k, v in values.items()]
    body = table(["metric", "value", "meaning"], rows, numeric=(1,), cls="wide")
    ctx.stage("metrics: cosine histograms")
    h, _ = results.cosine_histograms(ctx.home, emb)
    edges = np.asarray(h["edges"])
    mids, width = (edges[:-1] + edges[1:]) / 2, float(edges[1] - edges[0])
    fig = go.Figure()
    for name, counts, n, colour in (("unpaired (i ≠ j)", h["unpaired"], int(h["unpaired_n"]), "#999"),
                                    ("paired (i = j)", h["paired"], int(h["paired_n"]), PICK_COLOUR)):
        fig.add_trace(go.Bar(x=mids, y=np.asarray(counts) / (max(n, 1) * width), width=width, name=f"{name}, {n:,}",
                             marker_color=colour, opacity=0.6))
    fig.update_layout(barmode="overlay", bargap=0, height=320, margin=dict(l=0, r=0, t=30, b=0),
                      xaxis_title="cos(image, caption)", yaxis_title="density", title="Paired versus unpaired cosine")
    sampled = geometry.MAX_N < len(emb.ids)
    return Markup(
        para(f"Every metric of mmviz.geometry on the {len(emb.ids):,} images, each with its first caption"
             + (f"; uniformity, relative alignment and the unpaired cosines on a seeded sample of {geometry.MAX_N:,} "
                "pairs" if sampled else "") + ".")
        + body + ctx.figures.add(fig, "Cosine of each image with its own caption against other images' captions."))


def _transform_figures(ctx: Context, variants: list[tuple[str, object]]) -> Markup:
    """Before and each after, placed in the before layout, on shared axes."""
    from ..arrays import gather_rows
    from ..viz import pairs_figure, same_ranges

    layout, bi, bt = ctx.layout()
    img_rows, cap_rows, owner = ctx.drawn()
    placed = [("Before", bi, bt)]
    for title, after in variants:
        ai, at = gather_rows(after.image, img_rows), gather_rows(after.text, cap_rows)
        xy = layout.estimator.transform(np.concatenate([ai, at]).astype(np.float32))
        placed.append((title, xy[:len(ai)], xy[len(ai):]))
    figs = [pairs_figure(i, t, owner, lines=False, height=380, title=title) for title, i, t in placed]
    for f in figs:
        f.update_layout(showlegend=False, margin=dict(l=0, r=0, t=36, b=0))
    same_ranges(*figs, points=[p for _, i, t in placed for p in (i, t)])
    return Markup('<div class="row">' + "".join(
        ctx.figures.add(f, None) for f in figs) + "</div>")


def transforms(ctx: Context) -> Markup:
    from .. import geometry
    from .. import transforms as tf
    from ..derived import transform_parts, transformed
    from ..results import cached_json
    from ..retrieval import default_queries

    emb = ctx.emb
    queries = default_queries(max(len(emb.ids), len(emb.text)))
    ctx.stage("transforms: image and caption means")
    image_mean, text_mean = tf.means(emb.image, emb.text)
    gap_length = float(np.linalg.norm(image_mean - text_mean))
    kinds = [("collapse", {}, "Collapse", "C3 collapse: each modality's mean removed, then re-normalised"),
             ("corrupt", {"sigma": tf.C3_SIGMA, "seed": ctx.seed},
              f"Corrupt (σ {tf.C3_SIGMA:.3f})", "C3 corrupt: Gaussian noise (σ² = 0.016) on every coordinate"),
             ("shift", {"lam": gap_length}, f"Shift (λ {gap_length:.3f})",
              "Liang et al.'s shift: images and captions moved towards each other along the gap direction by "
              "the gap's length")]

    def evaluated(variant: str, images, texts) -> dict:
        parts = {**emb.key_parts, "variant": variant, "max_n": TRANSFORM_MAX_N, "recall_queries": queries,
                 "seed": ctx.seed}
        report = ctx.stage(f"transforms: metrics {'before' if variant == 'none' else 'after ' + variant.split(':')[0]}")
        return cached_json(ctx.home, "transform_metrics", parts, lambda: tf.evaluate(
            images, texts, emb.text_owner, max_n=TRANSFORM_MAX_N, seed=ctx.seed, recall_queries=queries,
            progress=report))[0]

    before = evaluated("none", emb.image, emb.text)
    afters, sets = [], []
    for kind, params, title, _ in kinds:
        report = ctx.stage(f"transforms: applying {kind}")
        after = transformed(ctx.home, transform_parts(emb.key_parts, kind, params), tf.make(kind, **params),
                            emb.image, emb.text, progress=report)
        sets.append((title, after))
        afters.append(evaluated(f"{kind}:{sorted(params.items())}", after.image, after.text))
    labels = {**geometry.METRICS, **tf.RECALL_METRICS}
    rows = []
    for key, value in before.items():
        cells = [labels.get(key, (key, ""))[0], num(value, 4)]
        for a in afters:
            cells.append(f"{num(a.get(key), 4)} ({a[key] - value:+.4f})" if key in a else "-")
        rows.append(cells + [labels.get(key, ("", ""))[1]])
    recall = ("recall@k over every query" if queries is None else
              f"recall@k over a seeded sample of {queries:,} image and {queries:,} caption queries, each against "
              "every key")
    return Markup(
        "<ul>" + "".join(f"<li><b>{esc(t)}</b>: {esc(d)}.</li>" for _, _, t, d in kinds) + "</ul>"
        + para("Each transform is fitted on every pair and changes nothing stored. After: the value and, in brackets, "
               "its change.")
        + table(["metric", "before", *[t for _, _, t, _ in kinds], "meaning"], rows, numeric=(1, 2, 3, 4), cls="wide")
        + note(f"Uniformity, relative alignment and the C3 terms use a seeded sample of {TRANSFORM_MAX_N:,} pairs; each "
               f"image's first caption stands for it in the geometry metrics; {recall} (an image hits when any of "
               "its captions is retrieved).")
        + _transform_figures(ctx, sets)
        + note("Before and after each transform on the gap axis: the transformed points are placed in the before "
               "layout, on the same axes.") + ctx.sample_note("Each figure"))


def retrieval(ctx: Context) -> Markup:
    from ..results import cached_json
    from ..retrieval import default_queries, recall_at_k, worst_pairs

    emb = ctx.emb
    ks = (1, 5, 10)
    directions = {"i2t": "Image → text", "t2i": "Text → image"}
    big = max(len(emb.ids), len(emb.text))
    queries = default_queries(big)

    def compute() -> dict:  # the Retrieval page's numbers, under its key
        report = ctx.stage("retrieval: recall@k")
        r = recall_at_k(emb.image, emb.text, ks, text_owner=emb.text_owner, queries=queries, seed=0, progress=report)
        report = ctx.stage("retrieval: the worst-ranked pairs")
        worst = worst_pairs(emb.image, emb.text, text_owner=emb.text_owner, limit=WORST, queries=queries,
                            progress=report)
        return {"recall": {d: {str(k): v for k, v in r[d].items()} for d in directions},
                "worst": {c: worst[c].tolist() for c in worst.columns}}

    numbers, _ = cached_json(ctx.home, "retrieval", {**emb.key_parts, "queries": queries, "seed": 0, "worst": WORST},
                             compute)
    recall = table(["direction", *[f"R@{k}" for k in ks]],
                   [[label, *[num(numbers["recall"][d][str(k)], 3) for k in ks]] for d, label in directions.items()],
                   numeric=(1, 2, 3))
    over = (f"Over all {len(emb.ids):,} images and {len(emb.text):,} captions." if queries is None else
            f"Over a seeded sample of {min(queries, len(emb.ids)):,} images and {min(queries, len(emb.text)):,} "
            "captions, each searched against every key.")
    w = numbers["worst"]
    n = min(WORST_SHOWN, len(w["caption"]))
    ids = [emb.ids[int(r)] for r in w["image"][:n]] + [emb.ids[int(r)] for r in w["best_image"][:n]]
    thumbs = ctx.thumbnails(ids)
    rows = []
    for i in range(n):
        own, best = emb.ids[int(w["image"][i])], emb.ids[int(w["best_image"][i])]
        rows.append([img(thumbs.get(own), f"image {own}"), emb.captions[int(w["caption"][i])], own,
                     num(int(w["t2i_rank"][i])), num(w["own_cosine"][i], 3), img(thumbs.get(best), f"image {best}"),
                     best, num(w["best_cosine"][i], 3)])
    return Markup(
        recall + note(f"{over} Image → text: a hit when any of the image's captions is among its k nearest captions; "
                      "text → image: when the caption's own image is among its k nearest images. Chance at R@1 is "
                      f"{1 / max(len(emb.ids), 1):.4f}.")
        + f"<h3>The {n} worst-ranked pairs</h3>"
        + para("The captions whose own image ranks lowest for them" + ("" if queries is None else
               f" among {min(queries, len(emb.text)):,} sampled captions") + ". A caption ranked far from its own "
               "image often describes another one, or the pair is wrong.")
        + table(["own image", "caption", "own id", "rank", "own cos", "best match", "best id", "best cos"], rows,
                numeric=(3, 4, 7)))


def captions(ctx: Context) -> Markup:
    from ..candidates import METRICS as AGREEMENT_NAMES
    from ..candidates import demo_candidates, score_candidates
    from ..models import ModelSpecError, ModelUnavailable

    ds, emb = ctx.ds, ctx.emb
    if "foil" not in ds.columns():
        raise Skip(f"{ds.name} has no demo candidates (ground truth, paraphrase and foil captions come with "
                   "shapes-world sets only). Score your own with `mmviz score NAME --candidates FILE`.")
    ctx.stage("captions: scoring the demo candidates")
    try:
        cands = demo_candidates(ds, emb, max_images=DEMO_MAX_IMAGES)
        res = score_candidates(emb, cands)
    except (ModelSpecError, ModelUnavailable) as e:
        raise Skip(f"scoring encodes the candidates with {emb.model}, which cannot be loaded here: {e}") from None
    except ValueError as e:
        raise Skip(str(e)) from None
    board = table(["system", "candidates", "MID", "CLIP-S", "RefCLIP-S", "mean PMI", "human"],
                  [[r.system, num(int(r.n)), num(r.mid, 2), num(r.clip_s, 3), num(r.refclip_s, 3), num(r.pmi_mean, 2),
                    num(r.human, 2)] for r in res.leaderboard.itertuples()], numeric=(1, 2, 3, 4, 5, 6))
    agreement = ""
    if res.agreement is not None:
        agreement = ("<h3>Agreement with the true/false labels</h3>" + table(
            ["metric", "candidates", "Kendall τ-b", "Kendall τ-c", "ROC AUC", "same-image pairs", "pairwise accuracy"],
            [[AGREEMENT_NAMES.get(r.metric, r.metric), num(int(r.n)), num(r.kendall_tau_b, 3), num(r.kendall_tau_c, 3),
              num(r.roc_auc, 3), num(int(r.pairs)), num(r.pairwise_accuracy, 3)] for r in res.agreement.itertuples()],
            numeric=(1, 2, 3, 4, 5, 6)))
    images = cands["image"].nunique()
    return Markup(
        para(f"Each of {images:,} images' first caption (ground truth), its second (a paraphrase) and a foil (one "
             "colour or shape word swapped), judged against the image's other captions. CLIP-S: 2.5 · max(cos, 0); "
             "RefCLIP-S: the harmonic mean of CLIP-S and the best cosine to the references; MID: the set-level mutual "
             "information divergence under Gaussians fitted to the reference pairs (higher is better for all three).")
        + board + agreement
        + note(f"Judged against {res.n_references:,} reference pairs, "
               + (f"each caption read as {res.prefix + '…'!r}." if res.prefix else "captions read as they are (no prefix).")
               + (" " + " ".join(res.warnings) if res.warnings else "")))


def _vqa_head(ctx: Context):
    """(folder, label) of a VQA head that reads this model's tokens: the builtin one for
    builtin:shapes, else one trained in the workspace (this dataset's first)."""
    from ..vqa import BUILTIN_VQA_DIR

    found = []
    for cfg in [BUILTIN_VQA_DIR / "config.json", *sorted((ctx.home / "vqa").glob("*/runs/*/config.json"))]:
        try:
            spec = json.loads(cfg.read_text("utf-8")).get("clip_model")
        except (OSError, ValueError):
            continue
        if spec == ctx.model and (cfg.parent / "model.safetensors").is_file():
            own = cfg.parent.parent.parent.name == ctx.ds.name
            found.append((not own, cfg.parent, "builtin BAN head (shapes world)" if cfg.parent == BUILTIN_VQA_DIR
                          else f"{cfg.parent.parent.parent.name}: {cfg.parent.name}"))
    if not found:
        raise Skip(f"no VQA head reads the tokens of {ctx.model}: the builtin head reads builtin:shapes; train one "
                   f"with `mmviz vqa train {ctx.ds.name}`.")
    return sorted(found, key=lambda f: f[0])[0][1:]


def vqa(ctx: Context) -> Markup:
    import plotly.graph_objects as go
    from PIL import Image

    from ..models import ModelSpecError, ModelUnavailable
    from ..vqa import VQAHead
    from ..vqa.questions import questions

    ds = ctx.ds
    if not ds.manifest.get("images"):
        raise Skip(f"{ds.name} holds vectors only, no images to ask about.")
    folder, label = _vqa_head(ctx)
    attached = questions(ctx.ws, ds) or []
    pick = next((ex for ex in attached if ex.question_type == "relation"), attached[0] if attached else None)
    image_id = str(pick.image) if pick else str(ctx.emb.ids[0])
    question = pick.question if pick else "what colour is the circle?"
    path = ds.image_path(image_id)
    if path is None or not path.is_file():
        raise Skip(f"the image file of {image_id} is not reachable.")
    ctx.stage("vqa: asking the head")
    try:
        head = VQAHead(folder)
        result = head.ask(str(path), question)
    except (ModelSpecError, ModelUnavailable, FileNotFoundError, ValueError) as e:
        raise Skip(f"the VQA head cannot be used here: {e}") from None
    picture = Image.open(path).convert("RGB")
    answers = table(["answer", "probability"], [[a + (" (expected)" if pick and a == pick.answer else ""), num(p, 3)]
                                               for a, p in result.answers], numeric=(1,))
    info = definition_list([("Image", image_id), ("Question", question), ("Expected", pick.answer if pick else "-"),
                            ("Head", label), ("Fusion", head.name)])
    body = info + answers
    if result.attention is None:
        return Markup(body + note(f"The {head.name} head has no attention maps (only BAN has)."))
    size = 320
    shown = picture.resize((size, size), Image.NEAREST if max(picture.size) < size else Image.BILINEAR)
    region = result.region_map()
    g = region.shape[0]
    centres = (np.arange(g) + 0.5) * size / g
    overlay = go.Figure(go.Image(source=png_uri(shown)))
    overlay.add_trace(go.Heatmap(z=region, x=centres, y=centres, colorscale="Hot", opacity=0.55, showscale=True,
                                 hovertemplate="row %{y:.0f} col %{x:.0f}: %{z:.3f}<extra></extra>"))
    overlay.update_layout(height=size + 60, width=size + 110, margin=dict(l=0, r=0, t=30, b=0),
                          title="Attention per patch, all words, mean of glimpses")
    overlay.update_xaxes(visible=False, range=[0, size])
    overlay.update_yaxes(visible=False, range=[size, 0])
    att = result.attention.mean(0)
    words = [plot_text(w) for w in result.words]
    rows = np.arange(len(words))  # by position: a word asked twice keeps both rows
    heat = go.Figure(go.Heatmap(z=att.T, y=rows, colorscale="Viridis", customdata=np.array(words)[:, None].repeat(
        att.shape[0], 1), hovertemplate="patch %{x}, word %{customdata}: %{z:.4f}<extra></extra>"))
    heat.update_layout(height=140 + 22 * len(words), margin=dict(l=0, r=0, t=30, b=0), title="Words by patches",
                       xaxis_title=f"image patch ({g} x {g} grid, row by row)",
                       yaxis=dict(autorange="reversed", tickmode="array", tickvals=rows.tolist(), ticktext=words))
    return Markup(
        para("A bilinear attention network (BAN; Kim, Jun and Zhang, NeurIPS 2018) joins every image patch with "
             "every question word of the frozen CLIP model, in several glimpses; its maps show which regions it "
             "joined with which words.") + '<div class="row"><div>' + body + "</div><div>"
        + ctx.figures.add(overlay) + "</div></div>" + ctx.figures.add(heat))


def captioners(ctx: Context) -> Markup:
    from ..models import BUILTIN_DIR, BUILTIN_SPEC

    parts: list[str] = []
    if ctx.model == BUILTIN_SPEC:
        path = BUILTIN_DIR / "captioners" / "metrics.json"
        try:
            doc = json.loads(path.read_text("utf-8"))
            means = doc["mean"]
        except (OSError, ValueError, KeyError, TypeError):
            parts.append(note(f"The shipped captioners' metrics ({path.name}) are not here.", "skipped"))
        else:
            s, t = doc.get("settings", {}), doc.get("test", {})
            parts.append("<h3>The shipped captioners</h3>" + para(
                "Text-only captioners shipped with builtin:shapes, one per training variant, scored on the shapes "
                f"world's test split ({num(t.get('images'))} images, {num(t.get('references'))} references), not on "
                "this dataset." + (f" Trained on {s['n_train']:,} scenes for {s.get('epochs', '?')} epoch(s); mean over "
                                   f"seed(s) {', '.join(map(str, s.get('seeds') or ['?']))}."
                                   if isinstance(s.get("n_train"), int) else "")))
            parts.append(table(["variant", *[label for _, label in CAPTIONER_METRICS]],
                               [[v, *[num(m.get(k), 3) for k, _ in CAPTIONER_METRICS]] for v, m in means.items()],
                               numeric=tuple(range(1, len(CAPTIONER_METRICS) + 1))))
    try:
        from ..captioner.runs import list_runs  # written alongside; any trouble only costs this part

        runs = [r for r in list_runs(ctx.ws, ctx.ds.name, ctx.model) if r.get("result")]
    except (ImportError, OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        runs = None
        parts.append(note(f"Captioner runs cannot be listed: {type(e).__name__}: {e}", "skipped"))
    if runs:
        rows = []
        for r in runs:
            res = r["result"]
            m = res.get("metrics") or {}
            rows.append([r["id"], res.get("variant", ""), num(res.get("test_images")),
                         *[num(m.get(k), 3) for k, _ in CAPTIONER_METRICS]])
        parts.append(f"<h3>Captioner runs on {esc(ctx.ds.name)}</h3>" + table(
            ["run", "variant", "test images", *[label for _, label in CAPTIONER_METRICS]], rows,
            numeric=tuple(range(2, len(CAPTIONER_METRICS) + 3))))
    elif runs is not None:
        parts.append(note(f"No finished captioner run of {ctx.ds.name} under {ctx.model} in the workspace."))
    if ctx.model != BUILTIN_SPEC and not runs:
        raise Skip(f"no captioner has been trained on {ctx.ds.name} under {ctx.model}"
                   + ("" if runs is not None else " (runs cannot be listed)") + ".")
    return Markup("".join(parts))


def finetune(ctx: Context) -> Markup:
    from ..finetune.runs import list_runs

    runs = [r for r in list_runs(ctx.home) if getattr(r["config"], "dataset", None) == ctx.ds.name]
    if not runs:
        raise Skip(f"no fine-tuning run of {ctx.ds.name} in the workspace (`mmviz finetune {ctx.ds.name}` starts one).")
    rows = []
    for r in runs:
        res, c = r["result"] or {}, r["config"]
        b, a = res.get("before", {}), res.get("after", {})
        rows.append([r["id"], r["state"], c.loss, c.model, f"{r['step']:,} / {r['steps']:,}",
                     num(res.get("first_loss"), 3), num(res.get("final_loss"), 3),
                     *[num(x.get(k), 3) for k in ("gap_length", "i2t_r1", "t2i_r1") for x in (b, a)]])
    return Markup(
        para("Short fine-tuning runs of this dataset, with the validation split's metrics before and after.")
        + table(["run", "state", "loss", "base model", "steps", "first loss", "final loss", "gap before", "gap after",
                 "R@1 i→t before", "R@1 i→t after", "R@1 t→i before", "R@1 t→i after"], rows,
                numeric=tuple(range(5, 13))))
