"""The built wheel carries the package data and entry points, and works when not editable."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def pip(*args):
    """Run ``pip *args`` quietly with this interpreter; a failure raises."""
    subprocess.run(
        [sys.executable, "-m", "pip", *args, "-q"],
        check=True,
        capture_output=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(out), str(ROOT))
    (path,) = out.glob("mliy_spawner-*.whl")
    return path


def test_wheel_holds_admin_files_and_templates(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in [
        "mliy_spawner/cloudformation/notebook-instance.yaml",
        "mliy_spawner/userdata_scripts/mliy-bootstrap.sh",
        "mliy_spawner/pricing_data/instances.json",
        "mliy_spawner/sample_plugins/route53.py",
        "mliy_spawner/templates/form.html",
        "mliy_spawner/hub_templates/home.html",
        "mliy_spawner/hub_templates/spawn_pending.html",
    ]:
        assert expected in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "mliy = mliy_spawner:MLiySpawner" in text
    assert "mliy = mliy_spawner.auth:MLiyAuthenticator" in text
    assert "mliy-pricing = mliy_spawner.pricing:main" in text


def test_installed_wheel_resolves_defaults_inside_the_package(wheel, tmp_path):
    target = tmp_path / "site"
    pip("install", "--no-deps", "--target", str(target), str(wheel))
    probe = (
        "import mliy_spawner, mliy_spawner.configs as c, mliy_spawner.pricing as p;"
        "from mliy_spawner.spawner import MLiySpawner;"
        "cfg = c.parse_software_configs({'x': {'ami_id': 'ami-12345678',"
        " 'instance_types': ['t2.micro'], 'params': {'python_packages': ''}}})['x'];"
        "print(mliy_spawner.__file__); print(cfg.template); print(cfg.user_data);"
        "print(p.get_catalog().price('m4.large', 'us-east-1'))"
    )
    # run from an empty folder so the checkout is not importable
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    package, template, user_data, price = result.stdout.split()
    assert package.startswith(str(target))
    assert template.startswith(str(target)) and template.endswith("notebook-instance.yaml")
    assert user_data.startswith(str(target)) and user_data.endswith("mliy-bootstrap.sh")
    assert price == "0.108"
