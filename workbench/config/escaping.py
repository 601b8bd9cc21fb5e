"""Text that is not ours (a run id read from a folder name, a teacher id, a data row, an error quoting
what a visitor sent, anything a model wrote) shown inside Markdown as itself: HTML is escaped; so is the
backtick, which would end a code span and let the rest be read as HTML, and so are square brackets,
which would make a link or an image (![x](url) would have every visitor's browser fetch url)."""
from __future__ import annotations

import html


def plain(value) -> str:
    """`value` as literal text inside Markdown (not inside a code span: entities are not decoded there)."""
    return (html.escape(str(value), quote=False).replace("`", "&#96;").replace("[", "&#91;")
            .replace("]", "&#93;"))
