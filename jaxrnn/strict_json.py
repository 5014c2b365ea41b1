"""JSON that every parser reads: Python's `json` writes nan and inf as `NaN` and `Infinity`, which are not
JSON. Every file and line jaxrnn writes goes through `dumps`, which writes a non-finite number as null."""

from __future__ import annotations

import json
import math
from typing import Any


def finite(obj: Any) -> Any:
    """`obj` with every float that is nan or infinite (in dicts, lists and tuples) replaced by None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def dumps(obj: Any, **kwargs: Any) -> str:
    """`json.dumps` of `finite(obj)`, refusing anything else that is not strict JSON."""
    return json.dumps(finite(obj), allow_nan=False, **kwargs)
