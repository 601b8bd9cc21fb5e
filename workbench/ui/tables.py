"""Tables as people read them: numbers rounded for the eye (102.39, not 102.39053047884875). Values stay
numbers, so a table still sorts by them; exports keep the full values (the callers keep the raw frame)."""
from __future__ import annotations

import math

import pandas as pd

DECIMALS = 2        # for magnitudes of 1 and more: perplexity 102.39, loss 4.63
SIGNIFICANT = 4     # below 1: agreement 0.3223, learning rate 0.0005, KL 0.01234


def rounded(value):
    """One number for the eye; anything else as it is."""
    if isinstance(value, bool) or not isinstance(value, float) or not math.isfinite(value) or value == 0:
        return value
    if abs(value) >= 1:
        return round(value, DECIMALS)
    return round(value, SIGNIFICANT - 1 - math.floor(math.log10(abs(value))))


def for_people(frame: pd.DataFrame | None) -> pd.DataFrame | None:
    """A copy of `frame` with every float column rounded (rounded); None stays None."""
    if frame is None:
        return None
    shown = frame.copy()
    for column in shown.columns:
        if pd.api.types.is_float_dtype(shown[column]):
            shown[column] = shown[column].map(rounded)
    return shown
