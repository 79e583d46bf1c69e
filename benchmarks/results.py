"""Writing a benchmark's figures into ``benchmarks/RESULTS.md``.

Each script owns one block between ``<!-- <script>:begin -->`` and ``<!-- <script>:end -->``
and rewrites only that block; the text around it (what the figures mean) is kept. A
script run for the first time appends its block under ``header``.
"""

import re
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def write_block(script, header, lines, results=RESULTS):
    """Replace ``script``'s block in ``results`` with ``lines`` (as a code block)."""
    begin, end = f"<!-- {script}:begin -->", f"<!-- {script}:end -->"
    text = results.read_text()
    block = f"{begin}\n```\n" + "\n".join(lines) + f"\n```\n{end}"
    if begin in text:
        text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda m: block, text, flags=re.S)
    else:
        text = text.rstrip("\n") + f"\n\n{header}\n\n{block}\n"
    results.write_text(text)
