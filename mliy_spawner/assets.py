"""Find the files admins read and edit: templates, user data, plugins, pricing.

In a source checkout they live at the repository root (``cloudformation/``,
``userdata/``, ``plugins/``, ``pricing/``). A non-editable install ships them inside
the package under other names (``pyproject.toml`` maps them), because
``mliy_spawner.userdata``, ``.plugins`` and ``.pricing`` are modules. Every default
path in the package is resolved through :func:`asset_path`, so both layouts work.
"""

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent

# folder at the repository root -> package folder in an installed wheel
_INSTALLED_NAMES = {
    "cloudformation": "cloudformation",
    "userdata": "userdata_scripts",
    "plugins": "sample_plugins",
    "pricing": "pricing_data",
}


def asset_dir(folder):
    """Return the directory holding the shipped ``folder`` (one of the four above)."""
    if folder not in _INSTALLED_NAMES:
        raise ValueError(f"unknown asset folder {folder!r}; one of {sorted(_INSTALLED_NAMES)}")
    installed = _PACKAGE / _INSTALLED_NAMES[folder]
    if installed.is_dir():
        return installed
    checkout = _PACKAGE.parent / folder
    if checkout.is_dir():
        return checkout
    raise FileNotFoundError(f"shipped folder {folder!r} not found under {_PACKAGE}")


def asset_path(folder, name):
    """Return the path of the shipped file ``folder/name``."""
    path = asset_dir(folder) / name
    if not path.is_file():
        raise FileNotFoundError(f"shipped file {folder}/{name} not found at {path}")
    return path
