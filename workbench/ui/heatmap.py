"""A text as tokens coloured by a per-token value (the inspector's heatmap), as an HTML fragment.

Token text is model output and user input: every piece is HTML-escaped, so `<script>` or
`<img onerror=...>` in a text shows as those characters. Positions are data attributes the page's
click handler reads; no token text ever reaches an attribute unescaped."""
from __future__ import annotations

import html
import math

# white -> red; alpha carries the value so the text stays readable in light and dark themes
_RGB = "220, 38, 38"


def token_heatmap(tokens: list[str], values: list[float], label: str, selected: int | None = None,
                  context: int = 1, gaps: list[bool] | None = None, gap_title: str = "") -> str:
    """tokens (L,) and values (L-1,): values[i] colours tokens[i+1], the token row i predicted. The first
    `context` tokens are context only, shown plain and not clickable: a text's first token, or the prompt
    a student answered. `selected` is a row index, outlined. Colour scale: 0 to the 95th percentile of
    the coloured values (with the maximum, a single outlier would wash out every other token). `gaps` (L-1,):
    rows that have no value (a cross-tokenizer run's unaligned positions), greyed and titled `gap_title`,
    never coloured as if their value were 0 or infinite."""
    if len(values) != len(tokens) - 1:
        raise ValueError(f"need one value per predicted token: {len(tokens) - 1}, got {len(values)}")
    if not 1 <= context <= len(tokens):
        raise ValueError(f"context must be in [1, {len(tokens)}] tokens, got {context}")
    if gaps is not None and len(gaps) != len(values):
        raise ValueError(f"need one gap flag per predicted token: {len(values)}, got {len(gaps)}")
    finite = sorted(v for row, v in enumerate(values) if row >= context - 1 and math.isfinite(v)
                    and not (gaps and gaps[row]))
    top = finite[min(len(finite) - 1, int(0.95 * len(finite)))] if finite else 1.0
    top = top if top > 0 else 1.0
    parts = [f'<span class="dw-tok dw-context">{_escape("".join(tokens[:context]))}</span>']
    for row in range(context - 1, len(values)):
        value = values[row]
        alpha = min(max(value / top, 0.0), 1.0) if math.isfinite(value) else 1.0
        outline = " dw-selected" if row == selected else ""
        if gaps and gaps[row]:
            parts.append(f'<span class="dw-tok dw-gap{outline}" data-pos="{row}" title="{html.escape(gap_title)}">'
                         f'{_escape(tokens[row + 1])}</span>')
            continue
        parts.append(f'<span class="dw-tok{outline}" data-pos="{row}" style="background-color: rgba({_RGB}, '
                     f'{alpha:.3f})" title="{html.escape(label)}: {value:.4g}">{_escape(tokens[row + 1])}</span>')
    greyed = f"; grey: {html.escape(gap_title)}" if gaps and any(gaps) else ""
    legend = (f'<div class="dw-legend">{html.escape(label)}: <span class="dw-scale"></span> 0 to {top:.3g}{greyed} '
              "(click a token to see both distributions)</div>")
    return f'<div class="dw-heatmap">{"".join(parts)}</div>{legend}'


def _escape(token: str) -> str:
    """Escaped, with line breaks kept as breaks and marked so an all-newline token stays clickable."""
    return html.escape(token).replace("\n", "↵<br>")


CSS = """
.dw-heatmap { white-space: pre-wrap; font-family: ui-monospace, monospace; line-height: 1.9; padding: 6px; }
.dw-tok { cursor: pointer; border-radius: 3px; padding: 1px 0; }
.dw-tok.dw-context { cursor: default; opacity: 0.7; }
.dw-tok.dw-selected { outline: 2px solid #2563eb; }
.dw-tok.dw-gap { color: #9ca3af; text-decoration: underline dotted; }
.dw-legend { font-size: 0.85em; opacity: 0.8; margin-top: 4px; }
.dw-scale { display: inline-block; width: 80px; height: 0.8em;
            background: linear-gradient(to right, rgba(220, 38, 38, 0), rgba(220, 38, 38, 1)); }
"""

# Delegated on the component's root: the fragment inside is replaced on every update.
CLICK_JS = """
element.addEventListener('click', (event) => {
  const token = event.target.closest('[data-pos]');
  if (token) { trigger('click', {pos: parseInt(token.dataset.pos, 10)}); }
});
"""
