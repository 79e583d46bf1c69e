"""What the benchmarks share: writing their figures into ``benchmarks/RESULTS.md``, and a
throw-away PostgreSQL.

Each script owns one block between ``<!-- <script>:begin -->`` and ``<!-- <script>:end -->``
and rewrites only that block; the text around it (what the figures mean) is kept. A
script run for the first time appends its block under ``header``.
"""

import re
import sys
from contextlib import contextmanager
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


@contextmanager
def postgres_databases(names, lines):
    """``{name: SQLAlchemy URL}`` of new databases on a throw-away PostgreSQL
    (``tests/pg.py``), stopped on leaving; None, with a line in ``lines`` saying so, when
    Debian's ``postgresql`` is not installed."""
    sys.path.insert(0, str(RESULTS.parent.parent / "tests"))
    from pg import PostgresServer, find_bin_dir

    bin_dir = find_bin_dir()
    if bin_dir is None:
        lines.append("PostgreSQL: not installed (Debian's postgresql), skipped")
        yield None
        return
    server = PostgresServer(bin_dir)
    server.start()
    try:
        yield {name: server.create_database(name) for name in names}
    finally:
        server.stop()
