"""What every benchmark does at the end: write its JSON report and say which goals it met."""
from __future__ import annotations

import json
from pathlib import Path


def write_report(out: str | Path, report: dict) -> None:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(report, indent=2) + "\n")
    goals = report.get("goals", {})
    print("goals:", ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in goals.items()))
    print(f"wrote {out}")
