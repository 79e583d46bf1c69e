"""How reading a user's groups grows with the number of groups the directory sends.

A ``memberOf`` header can list tens of thousands of DNs (nested groups, a directory that
expands everything). Two steps read it at every login:

- :func:`mliy_spawner.plugins.cn_groups`: the CN of each DN, repeats dropped;
- :func:`mliy_spawner.auth.clean_groups`: checks every name, repeats dropped.

Both drop repeats with ``dict.fromkeys`` (linear). For contrast, the ``if x not in list``
loop they used before is timed on the same names (quadratic: 4x the groups, 16x the
time). Each size holds 10 % repeats. Prints the best time per size and its ratio to the
size before (linear is about 4x per 4x). Run: ``python benchmarks/groups.py``
(``make bench`` does).
"""

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from mliy_spawner.auth import clean_groups  # noqa: E402
from mliy_spawner.plugins import cn_groups  # noqa: E402
from pricing import REPEAT, timed  # noqa: E402  (benchmarks/pricing.py)

SIZES = [1_250, 5_000, 20_000, 80_000]
QUADRATIC_UP_TO = 20_000  # the old loop takes minutes beyond this
log = logging.getLogger("mliy.bench")


def names(count):
    """``count`` group names, every tenth one a repeat of an earlier one."""
    return [f"group-{i - 5 if i % 10 == 9 else i}" for i in range(count)]


def member_of(count):
    return ";".join(f"CN={name},OU=Groups,DC=corp,DC=example" for name in names(count))


def quadratic_dedupe(items):
    """The loop cn_groups and clean_groups used before: a list scan per name."""
    kept = []
    for item in items:
        if item not in kept:
            kept.append(item)
    return kept


def _row(label, size, best, previous):
    ratio = f"{best / previous:5.1f}x" if previous else "     -"
    print(f"  {label:<30} {size:>7,} groups: {best * 1000:10.2f} ms  {ratio}")
    return best


def bench(label, make_input, fn, sizes, repeat=REPEAT):
    previous = None
    for size in sizes:
        data = make_input(size)
        best, _, result = timed(lambda data=data: fn(data), repeat=repeat)
        assert len(result) == len(set(names(size))), "repeats left in"
        previous = _row(label, size, best, previous)


def main():
    print(f"Python {sys.version.split()[0]} on {sys.platform}; best of {REPEAT} unless noted")
    print("ratio: time against the size before (4x the groups each row; linear is ~4x)")
    print()
    print("cn_groups (parse each DN, keep its CN; memberOf header):")
    bench("cn_groups", member_of, lambda value: cn_groups(value, log), SIZES)
    print("clean_groups (check each name; the plugin's list):")
    bench("clean_groups", names, lambda groups: clean_groups(groups, "bench"), SIZES)
    print("the dedupe alone:")
    bench("dict.fromkeys (now)", names, lambda groups: list(dict.fromkeys(groups)), SIZES)
    small = [size for size in SIZES if size <= QUADRATIC_UP_TO]
    bench("`not in` loop (before), 1 run", names, quadratic_dedupe, small, repeat=1)


if __name__ == "__main__":
    main()
