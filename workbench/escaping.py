"""Text that is not ours (a run id read from a folder name, a teacher id, a data row, an error quoting
what a visitor sent, anything a model wrote) shown inside Markdown as itself: HTML is escaped, and so is
the backtick, which would end a code span and let the rest be read as HTML."""
from __future__ import annotations

import html


def plain(value) -> str:
    """`value` as literal text inside Markdown (not inside a code span: entities are not decoded there)."""
    return html.escape(str(value), quote=False).replace("`", "&#96;")
