"""Pricing catalog benchmarks: load times, and indexed lookups against MLiy's full scan.

Run ``python benchmarks/pricing.py`` (``make bench`` does). Each ``bench_*`` function prints
its own lines; :func:`main` runs the functions listed in ``BENCHES`` in order, so timings of
other pieces that use the catalog can be appended there. :func:`synthetic_catalog_path`
gives them the same synthetic catalog (1,000 types x 20 regions), generated once per run.
"""

import json
import random
import statistics
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from mliy_spawner.assets import asset_path  # noqa: E402
from mliy_spawner.pricing import PriceCatalog  # noqa: E402

SYNTHETIC_TYPES = 1_000
SYNTHETIC_REGIONS = 20
LOOKUPS = 10_000
REPEAT = 5

_SIZES = ["nano", "micro", "small", "medium", "large", "xlarge", "2xlarge", "4xlarge", "8xlarge"]
_OSES = ["linux", "mswin", "mswinSQL", "mswinSQLWeb"]
_tmpdir = None


def timed(fn, repeat=REPEAT):
    """Run ``fn`` ``repeat`` times; return (best, median) seconds and the last result."""
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times), result


def synthetic_records(types=SYNTHETIC_TYPES, regions=SYNTHETIC_REGIONS, seed=2019):
    """Records shaped like ec2instances.info's: each type priced in 60-100 % of the regions,
    four OSes per region, on-demand and five reserved terms (strings, as in the real file)."""
    rng = random.Random(seed)
    region_names = [f"xx-region-{i}" for i in range(regions)]
    records = []
    for i in range(types):
        vcpu = 2 ** (i % len(_SIZES))
        pricing = {}
        for region in rng.sample(region_names, rng.randint(int(regions * 0.6), regions)):
            base = Decimal(vcpu) * Decimal(rng.randint(20, 60)) / 1000
            pricing[region] = {
                os_name: {
                    "ondemand": str(base * (k + 1)),
                    "reserved": {f"yrTerm{t}.noUpfront": str(base * k / 2) for t in range(5)},
                }
                for k, os_name in enumerate(_OSES)
            }
        records.append(
            {
                "instance_type": f"z{i // len(_SIZES)}.{_SIZES[i % len(_SIZES)]}",
                "vCPU": vcpu,
                "memory": vcpu * 4.0,
                "pretty_name": f"Synthetic {i}",
                "family": "Synthetic",
                "pricing": pricing,
            }
        )
    return records


def synthetic_catalog_path():
    """Path of the synthetic catalog file (1,000 types x 20 regions), written on first use."""
    global _tmpdir
    if _tmpdir is None:
        _tmpdir = tempfile.TemporaryDirectory(prefix="mliy-bench-")
        path = Path(_tmpdir.name) / "instances.json"
        path.write_text(json.dumps(synthetic_records()))
    return Path(_tmpdir.name) / "instances.json"


def scan_price(records, instance_type, region, os_name="linux"):
    """MLiy's way: walk the record list on every lookup until the type matches."""
    for rec in records:
        if rec["instance_type"] == instance_type:
            try:
                return Decimal(rec["pricing"][region][os_name]["ondemand"])
            except KeyError:
                return None
    return None


def _load(path):
    catalog = PriceCatalog(path)
    catalog.instance_types()  # the first lookup loads
    return catalog


def _bench_load(label, path):
    size = path.stat().st_size / 1e6
    json_best, _, _ = timed(lambda: json.loads(path.read_bytes()))
    best, median, catalog = timed(lambda: _load(path))
    types = len(catalog.instance_types())
    print(f"load {label}: {types} types, {size:.1f} MB")
    print(f"  PriceCatalog load+index: best {best * 1000:.1f} ms, median {median * 1000:.1f} ms")
    print(f"  json.loads alone:        best {json_best * 1000:.1f} ms")
    print(f"  validating and indexing cost {best / json_best:.2f}x the bare JSON parse")


def bench_load_real():
    _bench_load("real 2019 file (pricing/instances.json)", asset_path("pricing", "instances.json"))


def bench_load_synthetic():
    label = f"synthetic {SYNTHETIC_TYPES:,} types x {SYNTHETIC_REGIONS} regions"
    _bench_load(label, synthetic_catalog_path())


def _bench_lookups(label, path):
    records = json.loads(path.read_bytes())
    catalog = _load(path)
    regions = sorted({region for rec in records for region in rec["pricing"]})
    types = [rec["instance_type"] for rec in records]
    rng = random.Random(7)
    queries = [(rng.choice(types), rng.choice(regions)) for _ in range(LOOKUPS)]
    indexed = [catalog.price(t, r) for t, r in queries]
    assert indexed == [scan_price(records, t, r) for t, r in queries], "results differ"
    unknown = sum(p is None for p in indexed)

    idx_best, _, _ = timed(lambda: [catalog.price(t, r) for t, r in queries])
    scan_best, _, _ = timed(lambda: [scan_price(records, t, r) for t, r in queries], repeat=3)
    print(f"{LOOKUPS:,} lookups, {label} ({unknown:,} without a price):")
    print(f"  indexed (PriceCatalog.price): {idx_best * 1000:8.1f} ms")
    print(f"  full scan per lookup (MLiy):  {scan_best * 1000:8.1f} ms")
    print(f"  indexed is {scan_best / idx_best:,.0f}x faster")


def bench_lookups_real():
    _bench_lookups("real 2019 file, 70 types", asset_path("pricing", "instances.json"))


def bench_lookups_synthetic():
    _bench_lookups(f"synthetic {SYNTHETIC_TYPES:,} types", synthetic_catalog_path())


def bench_form_render():
    """Render the options form with every synthetic type in each block (a worst case)."""
    from mliy_spawner.configs import parse_launch_groups, parse_software_configs
    from mliy_spawner.form import render_form

    path = synthetic_catalog_path()
    types = [rec["instance_type"] for rec in json.loads(path.read_bytes())]
    template, user_data = path.parent / "stack.yaml", path.parent / "boot.sh"
    template.write_text("Resources: {}\n")
    user_data.write_text("#!/bin/bash\n")
    common = {
        "ami_id": "ami-0123abcd",
        "template": str(template),
        "user_data": str(user_data),
        "instance_types": types,
    }
    configs = parse_software_configs(
        {"cpu": {**common, "volume": {"default_size": 100, "max_size": 500}}, "gpu": common}
    )
    sg = ["sg-0123abcd"]
    groups = parse_launch_groups(
        {
            "one": {"security_group_ids": sg, "software_configs": ["cpu"]},
            "two": {"security_group_ids": sg, "software_configs": ["cpu", "gpu"]},
        },
        configs,
    )
    catalog = _load(path)
    print(f"options form render, {len(types):,} instance types per block (synthetic catalog):")
    for label, names in (("1 group x 1 config", ["one"]), ("2 groups, 3 blocks", ["one", "two"])):
        available = [groups[name] for name in names]

        def render(available=available):
            return render_form(
                user_name="alice",
                available_groups=available,
                configs=configs,
                catalog=catalog,
                region="xx-region-0",
                saved_options={},
            )

        render()  # the template compiles once per process
        best, median, html = timed(render)
        rows = html.count('type="radio"')
        print(
            f"  {label}: {rows:,} rows, {len(html) / 1e6:.2f} MB of HTML: "
            f"best {best * 1000:.1f} ms, median {median * 1000:.1f} ms "
            f"({best / rows * 1e6:.1f} us per row)"
        )


BENCHES = [
    bench_load_real,
    bench_load_synthetic,
    bench_lookups_real,
    bench_lookups_synthetic,
    bench_form_render,
]


def main():
    print(f"Python {sys.version.split()[0]} on {sys.platform}; best of {REPEAT} unless noted")
    try:
        for bench in BENCHES:
            print()
            bench()
    finally:
        if _tmpdir is not None:
            _tmpdir.cleanup()


if __name__ == "__main__":
    main()
