"""What leaves mmviz as text: CSV files that spreadsheets cannot run, terminal lines that
data cannot take over.

- `to_csv(table)`: the one writer of every CSV the app and the command line produce. A text
  cell that starts with =, +, -, @, a tab or a carriage return is what Excel, LibreOffice and
  Google Sheets read as a formula (=HYPERLINK(...), +cmd|' /C calc'!A0): such a cell gets a
  leading single quote, OWASP's rule for CSV injection. Numbers are left as numbers.
- `terminal_safe(text)`: control characters (escape sequences that retitle or clear a
  terminal, NUL, backspace, C1 codes) as visible escapes such as \\x1b.
"""
from __future__ import annotations

import re

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def escape_cell(value):
    """A text cell that a spreadsheet would run as a formula, quoted; anything else as is."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def to_csv(table, **kwargs) -> str:
    """A pandas DataFrame as CSV text with formula-like text cells escaped (index off unless
    asked for). Text in lists (a row's captions) is escaped the same way once joined."""
    import pandas as pd

    df = table.copy()
    for col in df.columns:  # text columns: object, or pandas' own string dtype
        if df[col].dtype == object or pd.api.types.is_string_dtype(df[col]):
            df[col] = df[col].map(lambda v: escape_cell(" | ".join(map(str, v)) if isinstance(v, list) else v))
    if df.index.dtype == object or pd.api.types.is_string_dtype(df.index):
        df.index = df.index.map(escape_cell)
    df.columns = [escape_cell(str(c)) for c in df.columns]
    kwargs.setdefault("index", False)
    return df.to_csv(**kwargs)


def terminal_safe(text, keep: str = "") -> str:
    """`text` with every control character but those in `keep` shown as an escape (\\x1b,
    \\n), so printing data can neither move the cursor nor retitle, clear or recolour the
    terminal."""
    return _CONTROL.sub(lambda m: m.group() if m.group() in keep else
                        m.group().encode("unicode_escape").decode("ascii"), str(text))


class TerminalSafeStream:
    """A text stream that writes through `terminal_safe`, keeping `keep` (line breaks, tabs,
    and for progress bars carriage returns). The command line wraps stdout and stderr in it
    for the length of a command, so no printed id, caption, column name or message can carry
    an escape sequence to the terminal."""

    def __init__(self, stream, keep: str):
        self.stream, self.keep = stream, keep

    def write(self, text: str) -> int:
        self.stream.write(terminal_safe(text, self.keep))
        return len(text)

    def __getattr__(self, name):  # flush, isatty, fileno, encoding, buffer ...
        return getattr(self.stream, name)
