"""``mliy-costs``: the usage ledger's costs from the store, as the pages and the API show them.

``mliy-costs report --month 2026-11 [--group G] [--user U] [--csv | --json]`` reads the
store (``--store``, else ``MLIY_STORE_URL``, else ``mliy.sqlite`` in the working folder)
and prints one line per server and the month's total. The numbers come from the same
code as the service's pages, ``api/costs`` and ``api/costs.csv``: they agree to the cent.
"""

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.engine import make_url

from . import costs, costviews
from .store import Store, store_url_from_env


def _parser():
    parser = argparse.ArgumentParser(prog="mliy-costs", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    report = sub.add_parser("report", help="one month's costs per server, and the total")
    report.add_argument("--month", help="YYYY-MM (default: this month)")
    report.add_argument("--user", help="only this user's servers")
    report.add_argument("--group", help="only this launch group's servers")
    report.add_argument("--hub", help="only the usage of this hub name (default: all)")
    report.add_argument(
        "--timezone", default="UTC", help="the time zone months are counted in (UTC)"
    )
    report.add_argument("--store", help="SQLAlchemy URL of the store (default MLIY_STORE_URL)")
    fmt = report.add_mutually_exclusive_group()
    fmt.add_argument("--csv", action="store_true", help="CSV, as api/costs.csv")
    fmt.add_argument("--json", action="store_true", help="JSON, as api/costs")
    return parser


def main(argv=None, now=None) -> int:
    """Returns 0 on success, 1 when the store cannot be read, 2 on usage errors."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2
    values = {k: getattr(args, k) for k in ("month", "user", "group") if getattr(args, k)}
    try:
        costs.zone(args.timezone)
    except costs.CostError:
        print(f"mliy-costs: --timezone: unknown time zone {args.timezone!r}", file=sys.stderr)
        return 2
    try:
        month, user, group = costviews.parse_query(values, args.timezone, now)
    except costs.CostError as e:
        print(f"mliy-costs: --{e}", file=sys.stderr)
        return 2
    url = make_url(args.store or store_url_from_env())
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        if not Path(url.database).exists():
            # reading must not leave an empty store behind
            print(
                f"mliy-costs: no store at {url.database} (--store or MLIY_STORE_URL)",
                file=sys.stderr,
            )
            return 1
    store = Store(url.render_as_string(hide_password=False))
    try:
        report = costviews.read_report(
            store, month, now or datetime.now(UTC), hub=args.hub, user=user, group=group
        )
    except Exception as e:
        print(f"mliy-costs: cannot read the store {store!r}: {e}", file=sys.stderr)
        return 1
    finally:
        store.close()
    if args.csv:
        sys.stdout.write(costviews.as_csv(report))
    elif args.json:
        sys.stdout.write(json.dumps(costviews.as_json(report), indent=2) + "\n")
    else:
        sys.stdout.write(costviews.as_text(report))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
