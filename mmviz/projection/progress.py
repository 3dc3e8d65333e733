"""Progress reports of long projections: `progress(done, total, stage)`, where `stage` says
what is being counted ("fitting UMAP on 20,000 points", "placing 1,980,000 points")."""
from __future__ import annotations

import inspect
from typing import Callable

# progress(done, total, stage); callables taking (done, total) only are accepted as well
Progress = Callable[[int, int, str], None]


def as_progress(progress) -> Progress | None:
    """A three-argument progress callable from `progress`: None stays None, a (done, total)
    callable (the older form) is wrapped so it is called without the stage."""
    if progress is None:
        return None
    try:
        inspect.signature(progress).bind(0, 0, "")
    except TypeError:
        return lambda done, total, stage: progress(done, total)
    except ValueError:  # no signature to inspect (some builtins): assume the current form
        pass
    return progress
