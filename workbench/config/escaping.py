"""Text that is not ours (a run id read from a folder name, a teacher id, a data row, an error quoting
what a visitor sent, anything a model wrote) shown inside Markdown as itself: HTML is escaped; so is the
backtick, which would end a code span and let the rest be read as HTML; so are square brackets, which
would make a link or an image (![x](url) would have every visitor's browser fetch url); and so is every
character Markdown reads as formatting (an error quoting glob('/*') must not turn into italics)."""
from __future__ import annotations

import html
import re

# Markdown's formatting characters as numeric entities, which Markdown shows as the character itself.
_ENTITIES = {c: f"&#{ord(c)};" for c in "`[]*~\\#|"}
# An underscore between two letters or digits (soft_label) is no emphasis in CommonMark: it stays readable.
# Any other (__init__, _x_) could open or close emphasis.
_EMPHASIS_UNDERSCORE = re.compile(r"(?<![^\W_])_|_(?![^\W_])")


def plain(value) -> str:
    """`value` as literal text inside Markdown (not inside a code span: entities are not decoded there)."""
    text = html.escape(str(value), quote=False).translate(str.maketrans(_ENTITIES))
    return _EMPHASIS_UNDERSCORE.sub("&#95;", text)
