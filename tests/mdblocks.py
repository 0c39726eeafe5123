"""Pull fenced code blocks out of Markdown files, for tests that execute documentation."""

import re
from pathlib import Path

FENCE = re.compile(r"^```([\w+-]*)[^\n]*\n(.*?)^```\s*$", re.S | re.M)


def code_blocks(path, language=None):
    """``[(language, code, line_number)]`` of each fenced block (of ``language`` if given)."""
    text = Path(path).read_text(encoding="utf-8")
    out = []
    for m in FENCE.finditer(text):
        lang = m.group(1).lower()
        if language is None or lang == language:
            out.append((lang, m.group(2), text.count("\n", 0, m.start()) + 1))
    return out
