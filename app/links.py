"""State in the URL: every page's controls as query parameters, so a link reopens the view.

A page calls `bind(page, params)` after its title and before its widgets. On the run that opens
the page, the URL's values are put into the widgets' session keys (a value that does not parse
is ignored with a short note, and the widget keeps its default); on every run the widgets'
current values are written back, with `dataset` and `model`, so the address bar always names
the view. The sidebar's `dataset` and `model` are read once per session, before the sidebar is
drawn (`read_sidebar`). `Copy link` shows the whole link with a copy button.

Why session keys and not widget defaults: a widget keeps its key's value across reruns, so the
link's value has to be in the key before the widget is first drawn. Streamlit logs that a keyed
widget with a default had its value set; that is the intent here, so the log line is filtered.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import urlencode, urlsplit, urlunsplit

import streamlit as st

OPENED = "_link_page"  # the page whose URL values were last applied
NOTES = "_link_notes"  # notes about the sidebar's parameters, shown by the next page
SIDEBAR_READ = "_link_sidebar_read"
SHARED = ("dataset", "model")
MAX_TEXT = 200  # characters of a free-text parameter (a query)


class _Expected(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "had its value set via the Session State API" not in record.getMessage()


logging.getLogger("streamlit.elements.lib.policies").addFilter(_Expected())


@dataclass(frozen=True)
class Param:
    """One control in the URL: `name` there, `key` in session state, `parse` (URL text ->
    value, ValueError saying what is expected) and `show` (value -> URL text)."""

    name: str
    key: str
    parse: Callable[[str], Any]
    show: Callable[[Any], str] = str


def choice(name: str, key: str, values: dict[str, str]) -> Param:
    """A radio or select box of labels, written as short values: {label: value}."""
    back = {v: k for k, v in values.items()}

    def parse(text: str):
        if text not in back:
            raise ValueError(f"expected one of {', '.join(values.values())}")
        return back[text]

    return Param(name, key, parse, lambda label: values.get(label, str(label)))


def _ranged(cast, lo, hi, what: str):
    """URL text -> cast(text) within [lo, hi], else ValueError saying what is expected."""
    def parse(text: str):
        try:
            v = cast(text)
        except ValueError:
            v = None
        if v is None or not lo <= v <= hi:  # also refuses nan
            raise ValueError(f"expected {what} from {lo:g} to {hi:g}")
        return v

    return parse


def integer(name: str, key: str, lo: int, hi: int) -> Param:
    return Param(name, key, _ranged(int, lo, hi, "a whole number"), lambda v: str(int(v)))


def number(name: str, key: str, lo: float, hi: float) -> Param:
    return Param(name, key, _ranged(float, lo, hi, "a number"), lambda v: f"{float(v):g}")


def text(name: str, key: str) -> Param:
    def parse(value: str) -> str:
        if len(value) > MAX_TEXT:
            raise ValueError(f"longer than {MAX_TEXT} characters")
        return value

    return Param(name, key, parse)


def flag(name: str, key: str) -> Param:
    def parse(value: str) -> bool:
        if value not in ("0", "1"):
            raise ValueError("expected 0 or 1")
        return value == "1"

    return Param(name, key, parse, lambda v: "1" if v else "0")


def several(name: str, key: str, values: dict[str, str]) -> Param:
    """A multiselect of labels, written as comma-separated values."""
    back = {v: k for k, v in values.items()}

    def parse(value: str) -> list[str]:
        items = [v for v in value.split(",") if v]
        bad = [v for v in items if v not in back]
        if bad:
            raise ValueError(f"unknown {', '.join(bad)}; expected some of {', '.join(values.values())}")
        return [back[v] for v in items]

    return Param(name, key, parse, lambda labels: ",".join(values.get(x, str(x)) for x in labels))


def listing(name: str, key: str) -> Param:
    """A multiselect whose options depend on the data (ids): comma-separated; the page drops
    the ones it does not offer."""
    def parse(value: str) -> list[str]:
        if len(value) > MAX_TEXT:
            raise ValueError(f"longer than {MAX_TEXT} characters")
        return [v for v in value.split(",") if v]

    return Param(name, key, parse, lambda items: ",".join(items))


MAX_IDS = 20  # a selection goes into the link when it is this small


class FromLink(list):
    """Ids that came from a link and still wait to be applied (to a selection, say)."""


def ids(name: str, key: str) -> Param:
    """A few ids (a selection), comma-separated; parsed as FromLink so the page can tell a
    link's ids, to apply once, from the ones it keeps in sync itself."""
    def parse(value: str) -> FromLink:
        items = [v for v in value.split(",") if v]
        if len(items) > MAX_IDS:
            raise ValueError(f"more than {MAX_IDS} ids")
        return FromLink(items)

    return Param(name, key, parse, lambda items: ",".join(items))


def write(name: str, value: str | None) -> None:
    """One parameter written now, from a fragment's rerun, which does not rerun `bind`."""
    if value:
        if st.query_params.get(name) != value:
            st.query_params[name] = value
    elif name in st.query_params:
        del st.query_params[name]


def read_sidebar(names: list[str], known_models: Callable[[], list[str]], other: str) -> None:
    """Once per session, before the sidebar: the link's dataset and model into their pickers."""
    from mmviz.models import ModelSpecError, parse_spec

    if st.session_state.get(SIDEBAR_READ):
        return
    st.session_state[SIDEBAR_READ] = True
    qp, notes = st.query_params, []
    if "dataset" in qp:
        if qp["dataset"] in names:
            st.session_state["dataset"] = qp["dataset"]
        else:
            notes.append(f"dataset={qp['dataset']}: no such dataset here")
    if "model" in qp:
        spec = qp["model"]
        if spec in known_models():
            st.session_state["model_choice"] = spec
        else:
            try:
                parse_spec(spec)
            except (ModelSpecError, ValueError) as e:
                notes.append(f"model={spec}: {e}")
            else:
                st.session_state["model_choice"], st.session_state["model_custom"] = other, spec
    st.session_state[NOTES] = notes


def link(values: dict[str, str]) -> str:
    """This page's address with `values` as its query."""
    base = urlsplit(st.context.url or "")
    return urlunsplit((base.scheme, base.netloc, base.path, urlencode(values), ""))


def bind(page: str, params: list[Param], dataset: str | None, model: str | None) -> dict[str, str]:
    """Apply the URL to the page's controls when it opens, write the controls to the URL on
    every run, note what was ignored, and offer the link. Returns the values written."""
    qp = st.query_params
    notes = list(st.session_state.pop(NOTES, []))
    if st.session_state.get(OPENED) != page:
        st.session_state[OPENED] = page
        names = {p.name for p in params}
        for p in params:
            if p.name in qp:
                try:
                    st.session_state[p.key] = p.parse(qp[p.name])
                except ValueError as e:
                    notes.append(f"{p.name}={qp[p.name][:40]}: {e}")
        notes += [f"{k}: not a setting of this page" for k in qp if k not in names and k not in SHARED]
    values = {k: v for k, v in (("dataset", dataset), ("model", model)) if v}
    for p in params:
        if p.key in st.session_state and st.session_state[p.key] is not None:
            values[p.name] = p.show(st.session_state[p.key])
    if qp.to_dict() != values:
        qp.from_dict(values)
    if notes:
        st.caption(":material/link_off: Ignored in the link, defaults used instead: " + "; ".join(notes))
    with st.popover("Copy link", icon=":material/link:"):
        st.caption("This view's link: the dataset, the model and this page's settings.")
        st.code(link(values), language=None, wrap_lines=True)
    return values
