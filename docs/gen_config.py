"""Write docs/configuration.md from the traits' help (the reference has one source: the code).

Run ``python docs/gen_config.py`` after changing a trait; a test fails while the committed
file differs from what this prints.
"""

import importlib
import inspect
import re
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CLASSES = [
    ("mliy_spawner.spawner", "MLiySpawner", 'JupyterHub.spawner_class = "mliy"'),
    ("mliy_spawner.auth", "MLiyAuthenticator", 'JupyterHub.authenticator_class = "mliy"'),
]

HEADER = """# Configuration reference

Generated from the traits' help by `python docs/gen_config.py`; do not edit by hand.
Only the settings these classes add are listed; everything JupyterHub's `Spawner` and
`Authenticator` offer applies too.
"""


def _default(cls, name, trait):
    if name in getattr(cls, "_trait_default_generators", {}):
        # a @default method computes it when the object is made: the help says how
        return "computed (see below)"
    try:
        value = trait.default_value_repr()
    except Exception:
        value = repr(trait.default_value)
    return f"`{value}`" if len(value) < 80 else f"`{value[:77]}...`"


_LITERAL_INTRO = re.compile(r"^(?P<text>.*?)\s*::$")


def to_markdown(help_text):
    """Help written the traitlets way (reST-flavoured) as Markdown.

    A paragraph ending in ``::`` introduces a literal block, the indented lines after a
    blank line: the ``::`` becomes ``:`` (or goes, when alone on its line) and the block
    becomes a fenced Python code block. Everything else is kept as written.
    """
    lines = inspect.cleandoc(help_text).splitlines()
    out = []
    i = 0
    while i < len(lines):
        line = lines[i]
        intro = _LITERAL_INTRO.match(line)
        j = i + 1
        while j < len(lines) and not lines[j].strip():
            j += 1
        if intro and j > i + 1 and j < len(lines) and lines[j][:1].isspace():
            block = []
            k = j
            while k < len(lines) and (not lines[k].strip() or lines[k][:1].isspace()):
                block.append(lines[k])
                k += 1
            while block and not block[-1].strip():
                block.pop()
            text = intro.group("text")
            if text:
                out += [text + ":", ""]
            out += ["```python", *textwrap.dedent("\n".join(block)).splitlines(), "```"]
            if k < len(lines):
                out.append("")
            i = k
            continue
        out.append(line)
        i += 1
    return "\n".join(out).strip()


def render():
    parts = [HEADER]
    for module_name, class_name, how in CLASSES:
        cls = getattr(importlib.import_module(module_name), class_name)
        parts.append(f"\n## {class_name}\n\nEnabled with `c.{how}`.\n")
        own = {
            name: trait
            for name, trait in cls.class_traits(config=True).items()
            if any(name in vars(klass) for klass in cls.__mro__[: cls.__mro__.index(cls) + 1])
        }
        for name in sorted(own):
            trait = own[name]
            help_text = to_markdown(trait.help or "") or "(no help)"
            parts.append(
                f"\n### `c.{class_name}.{name}`\n\n"
                f"{type(trait).__name__}, default {_default(cls, name, trait)}\n\n{help_text}\n"
            )
    return "".join(parts)


if __name__ == "__main__":
    (ROOT / "docs" / "configuration.md").write_text(render())
