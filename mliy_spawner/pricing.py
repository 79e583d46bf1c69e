"""Instance-type catalog over ec2instances.info's ``instances.json``: load once, index, look up.

The file is a JSON array with one record per instance type (``instance_type``, ``vCPU``,
``memory`` in GiB, ``pretty_name``, ``family``, ...) and on-demand prices as strings under
``pricing[region][os]["ondemand"]``; EMR's surcharge, where present, is under
``pricing[region]["emr"]["emr"]``. The shipped copy is ``pricing/instances.json``.

- :class:`PriceCatalog` reads nothing until the first lookup, then parses the whole file
  once into dicts, so every lookup is one dict access. At most once per ``check_interval``
  seconds a lookup calls ``os.stat``; when the file's inode, mtime or size changed, it
  reloads (an admin replaces the file without restarting the hub). A reload that fails is
  logged on ``mliy.launch.pricing`` once per change of the file, and the previous catalog stays in
  use; a failed first load raises :class:`PricingError`. The reload runs in the lookup that
  notices the change (about 20 ms for the shipped file), so it is thread-safe but synchronous.
- Price values: absent, JSON ``null``, ``""`` and ``"N/A"`` (any case, surrounding blanks
  ignored) mean "no price": lookups give None. A string of ASCII digits with an optional
  fraction (``"0.108"``), or a non-negative JSON number, is the price, kept exact as a
  Decimal. Anything else (``"abc"``, ``"$0.10"``, ``"-1"``, ``"1e3"``, ``"NaN"``, booleans,
  objects) makes the whole file invalid, with an error naming the record, the region, the OS
  and the value: a wrong price shown to users is worse than a refused file. So do a record
  without a non-empty ``instance_type``, a duplicate type, a ``vCPU`` that is not a whole
  number or a ``memory`` that is not a number, and non-objects where objects belong.
- :func:`get_catalog` shares one catalog per path in the process.
- ``mliy-pricing`` (:func:`main`): ``show``, ``list`` and ``refresh`` (validate a file or
  URL with the same parser, then replace the catalog atomically). ``refresh`` takes https
  URLs, plain http only with ``--allow-http``, and follows a redirect only to the same
  host name (and never from https to http unless http is allowed): prices shown to users
  come from it, so nobody on the path or at another host may choose them.
"""

import argparse
import difflib
import http.client
import json
import logging
import os
import re
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from .assets import asset_path
from .util import shorten

# under mliy.launch: its level and its launch.log (mliy_spawner.logs) apply
log = logging.getLogger("mliy.launch.pricing")

DEFAULT_REGION = "us-east-1"
DEFAULT_OS = "linux"
_NO_PRICE = {"", "N/A"}
_PRICE_RE = re.compile(r"[0-9]+(\.[0-9]+)?")  # ASCII only: Decimal() would take "١٢"
_MAX_DOWNLOAD = 256 * 1024 * 1024  # today's full ec2instances.info file is well below this


class PricingError(ValueError):
    """The catalog file is missing or malformed; the message names the file and record."""


@dataclass(frozen=True)
class InstanceInfo:
    instance_type: str
    vcpu: int
    memory_gib: float
    pretty_name: str
    family: str


@dataclass(frozen=True)
class _Index:
    infos: dict  # instance_type -> InstanceInfo
    prices: dict  # (instance_type, region, os) -> Decimal (only known prices)
    emr: dict  # (instance_type, region) -> Decimal
    types: list  # instance types, sorted by family prefix, size, name


def _price(value, where):
    # The common case first (this runs for every price in the file); same rule as _PRICE_RE.
    if type(value) is str and value.isascii() and value.replace(".", "", 1).isdigit():
        if value[0] != "." and value[-1] != ".":
            return Decimal(value)
    if value is None or (isinstance(value, str) and value.strip().upper() in _NO_PRICE):
        return None
    if isinstance(value, str) and _PRICE_RE.fullmatch(value.strip()):
        return Decimal(value.strip())
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < 1e9:
        return Decimal(str(value))
    allowed = "a number like '0.108', or '', 'N/A' or null for none"
    at, region, os_name, key = where  # the message is only built when needed
    where = f"{at}: pricing[{region!r}][{os_name!r}][{key!r}]"
    raise PricingError(f"{where} is {shorten(value)}, not a price (allowed: {allowed})")


def _record(index, rec, source):
    if not isinstance(rec, dict):
        raise PricingError(f"{source}: record {index} is {type(rec).__name__}, not an object")
    name = rec.get("instance_type")
    if not isinstance(name, str) or not name.strip():
        got = "no 'instance_type'" if name is None else f"'instance_type' {shorten(name)}"
        raise PricingError(f"{source}: record {index} has {got} (a non-empty string is required)")
    at = f"{source}: record {index} ({name})"
    vcpu, memory = rec.get("vCPU"), rec.get("memory")
    if not isinstance(vcpu, int) or isinstance(vcpu, bool) or vcpu < 0:
        raise PricingError(f"{at}: 'vCPU' is {shorten(vcpu)}, not a whole number")
    if not isinstance(memory, int | float) or isinstance(memory, bool) or not 0 <= memory < 1e9:
        raise PricingError(f"{at}: 'memory' is {shorten(memory)}, not a number of GiB")
    info = InstanceInfo(
        name, vcpu, float(memory), str(rec.get("pretty_name") or name), str(rec.get("family") or "")
    )
    prices, emr = {}, {}
    pricing = {} if rec.get("pricing") is None else rec["pricing"]
    if not isinstance(pricing, dict):
        raise PricingError(f"{at}: 'pricing' is {shorten(pricing)}, not an object")
    for region, by_os in pricing.items():
        if not isinstance(by_os, dict):
            raise PricingError(f"{at}: pricing[{region!r}] is {shorten(by_os)}, not an object")
        for os_name, terms in by_os.items():
            if not isinstance(terms, dict):
                where = f"{at}: pricing[{region!r}][{os_name!r}]"
                raise PricingError(f"{where} is {shorten(terms)}, not an object")
            key = "emr" if os_name == "emr" else "ondemand"
            value = _price(terms.get(key), (at, region, os_name, key))
            if value is not None and os_name == "emr":
                emr[(name, region)] = value
            elif value is not None:
                prices[(name, region, os_name)] = value
    return info, prices, emr


def parse_catalog(data, source="<data>") -> _Index:
    """Validate and index ``data`` (bytes or str of an instances.json); raise PricingError."""
    try:
        records = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise PricingError(f"{source}: not JSON ({e})") from None
    if not isinstance(records, list):
        raise PricingError(
            f"{source}: expected a JSON array of instance records, got {type(records).__name__}"
        )
    infos, prices, emr, first_seen = {}, {}, {}, {}
    for index, rec in enumerate(records):
        info, rec_prices, rec_emr = _record(index, rec, source)
        if info.instance_type in infos:
            raise PricingError(
                f"{source}: record {index} ({info.instance_type}): duplicate instance_type, "
                f"first at record {first_seen[info.instance_type]}"
            )
        infos[info.instance_type], first_seen[info.instance_type] = info, index
        prices.update(rec_prices)
        emr.update(rec_emr)

    def order(name):
        return (name.split(".")[0], infos[name].vcpu, infos[name].memory_gib, name)

    return _Index(infos, prices, emr, sorted(infos, key=order))


class PriceCatalog:
    """Lookups over one instances.json file, reloaded when the file changes."""

    def __init__(self, path, check_interval=1.0):
        self.path = Path(path)
        self.check_interval = check_interval
        self._index = None
        self._signature = None  # (inode, mtime_ns, size) of the file last loaded or tried
        self._next_check = 0.0
        self._lock = threading.Lock()

    def _stat(self):
        try:
            st = os.stat(self.path)
        except OSError as e:  # a signature too: a missing file is reported once, not per lookup
            return ("unreadable", e.errno)
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _load(self):
        self._signature = self._stat()  # before reading: a change while reading is seen next time
        try:
            data = self.path.read_bytes()
        except OSError as e:
            raise PricingError(f"{self.path}: cannot read the catalog ({e})") from None
        return parse_catalog(data, str(self.path))

    def _current(self):
        index = self._index
        if index is not None and time.monotonic() < self._next_check:
            return index
        with self._lock:
            if self._index is None:
                self._index = self._load()
                log.info("Loaded %s instance types from %s", len(self._index.types), self.path)
            elif time.monotonic() >= self._next_check:
                self._reload_if_changed()
            self._next_check = time.monotonic() + self.check_interval
            return self._index

    def _reload_if_changed(self):
        try:
            if self._stat() == self._signature:
                return
            self._index = self._load()
            log.info("Reloaded %s instance types from %s", len(self._index.types), self.path)
        except PricingError as e:
            # Logged once per change of the file: the signature of the bad file is kept.
            log.error("Keeping the previous pricing catalog; reloading failed: %s", e)

    def price(self, instance_type, region=DEFAULT_REGION, os=DEFAULT_OS) -> Decimal | None:
        """On-demand $/hour as a Decimal, or None when the type, region or OS has no price."""
        return self._current().prices.get((instance_type, region, os))

    def emr_price(self, instance_type, region=DEFAULT_REGION) -> Decimal | None:
        """EMR's $/hour surcharge for the type in the region, or None."""
        return self._current().emr.get((instance_type, region))

    def info(self, instance_type) -> InstanceInfo | None:
        """The :class:`InstanceInfo` of the type, or None when it is not in the catalog."""
        return self._current().infos.get(instance_type)

    def instance_types(self) -> list[str]:
        """All instance types, ordered by family prefix, then size."""
        return list(self._current().types)


_catalogs = {}
_catalogs_lock = threading.Lock()


def get_catalog(path=None) -> PriceCatalog:
    """The process-wide catalog of ``path`` (default: the shipped file), created on first use."""
    key = os.path.abspath(path if path is not None else asset_path("pricing", "instances.json"))
    with _catalogs_lock:
        if key not in _catalogs:
            _catalogs[key] = PriceCatalog(key)
        return _catalogs[key]


def _check_url(url, allow_http, origin=None):
    """Raise :class:`PricingError` unless ``url`` may be fetched: https (http with
    ``allow_http``) and, for a redirect from ``origin``, the same host name."""
    parts = urllib.parse.urlsplit(url)
    allowed = ("https", "http") if allow_http else ("https",)
    if parts.scheme.lower() not in allowed:
        hint = "" if allow_http or parts.scheme.lower() != "http" else "; --allow-http takes http"
        what = f"redirected to {url}" if origin else "unsupported URL scheme"
        raise PricingError(f"{origin or url}: {what} (allowed: {', '.join(allowed)}){hint}")
    if origin and parts.hostname != urllib.parse.urlsplit(origin).hostname:
        raise PricingError(
            f"{origin}: redirected to another host ({parts.hostname}); only redirects to the"
            " same host are followed"
        )


class _SameHostRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only when :func:`_check_url` passes it."""

    def __init__(self, origin, allow_http):
        self.origin = origin
        self.allow_http = allow_http

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        try:
            _check_url(newurl, self.allow_http, origin=self.origin)
        except PricingError:
            fp.close()
            raise
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _fetch(source, allow_http=False):
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", source):
        _check_url(source, allow_http)
        opener = urllib.request.build_opener(_SameHostRedirects(source, allow_http))
        with opener.open(source, timeout=60) as response:
            data = response.read(_MAX_DOWNLOAD + 1)
    else:
        data = Path(source).read_bytes()
    if len(data) > _MAX_DOWNLOAD:
        raise PricingError(f"{source}: larger than {_MAX_DOWNLOAD} bytes")
    return data


def refresh(source, target, allow_http=False) -> int:
    """Validate the catalog at ``source`` (path or https URL; http with ``allow_http``),
    then atomically replace ``target`` with it. Returns the number of instance types.
    ``target`` is untouched on error. Redirects are followed to the same host only."""
    data = _fetch(source, allow_http)
    count = len(parse_catalog(data, source).types)
    target = Path(target)
    mode = target.stat().st_mode & 0o777 if target.exists() else 0o644  # keep the file's mode
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        os.unlink(tmp)
        raise
    return count


def _money(value):
    return "unknown" if value is None else str(value)


def _cmd_show(args, catalog):
    info = catalog.info(args.type)
    if info is None:
        near = difflib.get_close_matches(args.type, catalog.instance_types(), n=3)
        hint = f"did you mean {', '.join(near)}?" if near else "see `mliy-pricing list`"
        print(f"mliy-pricing: unknown instance type {args.type!r} ({hint})", file=sys.stderr)
        return 1
    print(f"type:      {info.instance_type}\nname:      {info.pretty_name}")
    print(f"family:    {info.family}\nvCPU:      {info.vcpu}\nmemory:    {info.memory_gib:g} GiB")
    print(f"$/hour:    {_money(catalog.price(info.instance_type, args.region, args.os))}", end="")
    print(f" ({args.region}, {args.os}, on-demand)")
    print(f"EMR $/h:   {_money(catalog.emr_price(info.instance_type, args.region))}")
    return 0


def _cmd_list(args, catalog):
    types = catalog.instance_types()  # load first: a broken file gives an error, no header
    print(f"{'TYPE':<14} {'VCPU':>4} {'MEMORY_GIB':>10}  $/HOUR ({args.region}, {args.os})")
    for name in types:
        info, price = catalog.info(name), _money(catalog.price(name, args.region, args.os))
        print(f"{name:<14} {info.vcpu:>4} {info.memory_gib:>10g}  {price}")
    return 0


def main(argv=None) -> int:
    """The ``mliy-pricing`` command. Returns 0 on success, 1 on errors, 2 on usage errors."""
    parser = argparse.ArgumentParser(prog="mliy-pricing", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    show = sub.add_parser("show", help="vCPU, memory and hourly price of one instance type")
    show.add_argument("type", help="instance type, e.g. m4.large")
    lst = sub.add_parser("list", help="a table of all instance types with their hourly price")
    ref = sub.add_parser("refresh", help="validate a new catalog, then replace the file with it")
    ref.add_argument("source", help="path or https URL of an ec2instances.info instances.json")
    ref.add_argument(
        "--allow-http",
        action="store_true",
        help="also take a plain http URL (anyone on the path could change the prices)",
    )
    for p in (show, lst):
        p.add_argument("--region", default=DEFAULT_REGION, help="AWS region (default %(default)s)")
        p.add_argument("--os", default=DEFAULT_OS, help="operating system (default %(default)s)")
    for p in (show, lst, ref):
        p.add_argument("--file", help="catalog file (default: the shipped pricing/instances.json)")
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2
    try:
        args.file = args.file or str(asset_path("pricing", "instances.json"))
        if args.command == "refresh":
            count = refresh(args.source, args.file, allow_http=args.allow_http)
            print(f"Replaced {args.file} with {count} instance types from {args.source}")
            return 0
        catalog = PriceCatalog(args.file)
        return (_cmd_show if args.command == "show" else _cmd_list)(args, catalog)
    except BrokenPipeError:  # e.g. `mliy-pricing list | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (ValueError, OSError, http.client.HTTPException) as e:  # PricingError is a ValueError
        print(f"mliy-pricing: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
