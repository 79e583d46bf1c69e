"""Write docs/configuration.md from the traits' help (the reference has one source: the code).

Run ``python docs/gen_config.py`` after changing a trait; a test fails while the committed
file differs from what this prints.
"""

import importlib
import inspect
import sys
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


def _default(trait):
    try:
        value = trait.default_value_repr()
    except Exception:
        value = repr(trait.default_value)
    return value if len(value) < 80 else value[:77] + "..."


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
            help_text = inspect.cleandoc(trait.help or "").strip() or "(no help)"
            parts.append(
                f"\n### `c.{class_name}.{name}`\n\n"
                f"{type(trait).__name__}, default `{_default(trait)}`\n\n{help_text}\n"
            )
    return "".join(parts)


if __name__ == "__main__":
    (ROOT / "docs" / "configuration.md").write_text(render())
