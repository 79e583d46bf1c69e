"""userdata/mliy-bootstrap.sh: shellcheck, and the rendered user data run in a sandbox
(mliy_spawner.demo.sandbox) against a local stand-in for the mliy service.

The sandbox stubs the system commands; the test puts a fake ``jupyterhub-singleuser`` on
PATH (it records its argv and environment, then serves HTTP on the port it was given),
so "starting the server" and "waiting for it" run for real without a hub.
"""

import itertools
import json
import os
import shutil
import stat
import subprocess
import sys
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from hubapi import free_port

from mliy_spawner.assets import asset_path
from mliy_spawner.demo.sandbox import (
    prepare_sandbox,
    read_environment_file,
    start_notebook,
    stop_notebook,
    stub_calls,
)
from mliy_spawner.userdata import UserDataError, assemble, build_user_data

SCRIPT = asset_path("userdata", "mliy-bootstrap.sh")
PARAMS = {"python_packages": "jupyterhub>=5,<7\njupyterlab", "home_mode": "750"}
TOKEN = "tok" + "5ec7e7" * 5
INSTANCE_ID = "i-0123456789abcdef0"
HOSTILE_USER = 'o\'brien $(touch pwned) `touch pwned` \\ "q" ${HOME} ünï ✓\nline2\t'
HOSTILE_SERVER = "srv'; touch pwned; echo '$x\\"
CUSTOM = "a\"b`c$d\\e\\\nf'g $(touch pwned) # not a comment ; either"
STEPS = [
    "checking the environment",
    "mounting the volume",
    "creating the user",
    "installing packages",
    "configuring the server",
    "starting the server",
    "done",
]

FAKE_SINGLEUSER = f"""#!{sys.executable}
# test stand-in for jupyterhub-singleuser: record what it got, serve HTTP on --ip/--port
import http.server, json, os, sys
opts = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
with open(os.path.join(os.environ["HOME"], "singleuser-seen.json"), "w") as f:
    json.dump({{"argv": sys.argv[1:], "env": dict(os.environ)}}, f)
class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer((opts["ip"], int(opts["port"])), Quiet).serve_forever()
"""


def test_shellcheck_passes():
    shellcheck = shutil.which("shellcheck") or os.path.join(
        os.path.dirname(sys.executable), "shellcheck"
    )
    result = subprocess.run([shellcheck, str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_script_leaves_room_for_the_preamble():
    # EC2 takes 16 KB of user data: the preamble (get_env() and the bootstrap code, the
    # admin's environment) needs about 3 KB of it
    assert len(SCRIPT.read_bytes()) <= 13 * 1024


def test_script_documents_its_placeholders_and_environment():
    text = SCRIPT.read_text()
    header = text.split("\nset -Eeuo pipefail", 1)[0]
    for name in [*PARAMS, "MLIY_SERVICE_URL", "MLIY_NOTEBOOK_PORT", "MLIY_NOTEBOOK_USER"]:
        assert name in header
    for name in ["MLIY_VOLUME_DEVICE", "MLIY_VOLUME_MOUNT", "MLIY_LOCAL_MODE", "MLIY_LOCAL_ROOT"]:
        assert name in header
    # the placeholders the default configuration must supply are exactly these
    with pytest.raises(ValueError, match="home_mode, python_packages"):
        build_user_data(text, {}, {}, {})


class ProgressService:
    """The mliy service's progress endpoint, on 127.0.0.1: records every POST."""

    def __init__(self, status=200):
        self.posts = []
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                service.posts.append(
                    {
                        "path": self.path,
                        "authorization": self.headers.get("Authorization"),
                        "content_type": self.headers.get("Content-Type"),
                        "json": json.loads(body),
                    }
                )
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/services/mliy/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def steps(self):
        return [p["json"] for p in self.posts]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class Boot:
    """One run of the rendered user data in a sandbox under ``base``."""

    def __init__(self, base, service_url, *, hub_env=None, params=PARAMS, on_path=True):
        self.base = base
        self.root = base / "root"
        self.fakebin = base / "fakebin"
        self.fakebin.mkdir(parents=True)
        fake = self.fakebin / "jupyterhub-singleuser"
        fake.write_text(FAKE_SINGLEUSER)
        fake.chmod(0o755)
        self.port = free_port()
        self.env = prepare_sandbox(self.root, python_bin_dir=str(self.fakebin))
        if not on_path:  # a bare AMI: jupyterhub-singleuser only after "pip install"
            # (nor from this process's PATH: `make test` puts the virtualenv on it)
            self.env["PATH"] = os.pathsep.join(
                d
                for d in self.env["PATH"].split(os.pathsep)
                if d and not os.path.exists(os.path.join(d, "jupyterhub-singleuser"))
            )
        self.env.update(MLIY_LOCAL_INSTANCE_ID=INSTANCE_ID, MLIY_LOCAL_PORT=str(self.port))
        self.hub_env = {
            "JUPYTERHUB_API_TOKEN": TOKEN,
            "JPY_API_TOKEN": TOKEN,
            "JUPYTERHUB_USER": HOSTILE_USER,
            "JUPYTERHUB_SERVER_NAME": HOSTILE_SERVER,
            "JUPYTERHUB_API_URL": "http://127.0.0.1:8081/hub/api",
            "JUPYTERHUB_SERVICE_PREFIX": "/user/o%27brien/",
            "JUPYTERHUB_SERVICE_URL": "http://0.0.0.0:8888/user/o%27brien/",
            "JUPYTERHUB_OAUTH_SCOPES": json.dumps(["access:servers!server=o'brien/"]),
            "CUSTOM_SETTING": CUSTOM,
            "MLIY_SERVICE_URL": service_url,
            "MLIY_NOTEBOOK_PORT": "8888",
            "MLIY_NOTEBOOK_USER": "obrien",
            "MLIY_VOLUME_DEVICE": "/dev/sdf",
            "MLIY_VOLUME_MOUNT": "/home",
        }
        self.hub_env.update(hub_env or {})
        self.user_data = base / "user-data"
        self.user_data.write_text(
            build_user_data(SCRIPT.read_text(), params, {"home_mode": "700"}, self.hub_env)
        )
        self.cwd = base / "cwd"
        self.cwd.mkdir()

    def stub(self, name, body):
        """Replace the sandbox's stub ``name`` with a shell script."""
        path = self.root / "stub-bin" / name
        path.write_text("#!/bin/sh\n" + body + "\n")
        path.chmod(0o755)

    def run(self):
        self.result = subprocess.run(
            ["bash", str(self.user_data)],
            env=self.env,
            cwd=self.cwd,
            capture_output=True,
            timeout=90,
        )
        self.output = (self.result.stdout + self.result.stderr).decode("utf-8", "replace")
        return self

    def path(self, absolute):
        return self.root / absolute.lstrip("/")

    def calls(self, command):
        return [call[1:] for call in stub_calls(self.root) if call[0] == command]

    def seen_by_server(self):
        return json.loads(self.path("/home/obrien/singleuser-seen.json").read_text())

    def stop(self):
        stop_notebook(self.root)


@pytest.fixture
def service():
    service = ProgressService()
    yield service
    service.close()


@pytest.fixture
def boot(tmp_path, service):
    """Make a Boot (not run yet); its server is stopped afterwards."""
    made = []

    def make(**kwargs):
        made.append(Boot(tmp_path, kwargs.pop("service_url", service.url), **kwargs))
        return made[-1]

    yield make
    for b in made:
        b.stop()


@pytest.fixture(scope="module")
def booted(tmp_path_factory):
    """One successful run, shared by the tests that only look at its results."""
    service = ProgressService()
    b = Boot(tmp_path_factory.mktemp("booted"), service.url).run()
    b.service = service
    yield b
    b.stop()
    service.close()


def test_bootstrap_succeeds(booted):
    assert booted.result.returncode == 0, booted.output


def test_steps_are_reported_in_order_ending_with_done(booted):
    steps = booted.service.steps()
    assert [s["step"] for s in steps] == STEPS
    percents = [s["percent"] for s in steps]
    assert percents == sorted(set(percents)) and percents[-1] == 100 and percents[0] > 0
    assert all(s["failed"] is False for s in steps)
    for post in booted.service.posts:
        assert post["path"] == f"/services/mliy/api/progress/{INSTANCE_ID}"
        assert post["authorization"] == f"token {TOKEN}"
        assert post["content_type"] == "application/json"


def test_token_never_shows_outside_the_env_file(booted):
    assert TOKEN not in booted.output
    assert TOKEN not in (booted.root / "stub-calls.log").read_text()
    assert TOKEN not in booted.path("/usr/local/bin/mliy-notebook").read_text()
    assert TOKEN not in booted.path("/etc/systemd/system/mliy-notebook.service").read_text()
    assert TOKEN not in booted.path("/var/log/mliy-notebook.log").read_text()


def test_hostile_values_run_nothing(booted):
    assert not list(booted.base.rglob("pwned"))


def test_env_file_is_root_only_and_exact(booted):
    env_file = booted.path("/etc/mliy/notebook.env")
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(env_file.parent.stat().st_mode) == 0o700
    expected = {k: v for k, v in booted.hub_env.items() if not k.startswith("MLIY_")}
    expected["JUPYTERHUB_SERVICE_URL"] = f"http://127.0.0.1:{booted.port}/user/o%27brien/"
    assert read_environment_file(env_file) == expected


def test_server_runs_with_the_env_file_only(booted):
    seen = booted.seen_by_server()
    assert seen["argv"][:2] == ["--ip=127.0.0.1", f"--port={booted.port}"]
    assert ("--allow-root" in seen["argv"]) == (os.geteuid() == 0)
    env = seen["env"]
    assert env["JUPYTERHUB_API_TOKEN"] == TOKEN
    assert env["JUPYTERHUB_USER"] == HOSTILE_USER
    assert env["JUPYTERHUB_SERVER_NAME"] == HOSTILE_SERVER
    assert env["CUSTOM_SETTING"] == CUSTOM
    assert env["JUPYTERHUB_SERVICE_URL"] == f"http://127.0.0.1:{booted.port}/user/o%27brien/"
    # nothing of the bootstrap's own environment leaks into the server's
    assert not [k for k in env if k.startswith("MLIY_")]
    with urllib.request.urlopen(f"http://127.0.0.1:{booted.port}/", timeout=5) as r:
        assert r.status == 200


def test_unit_and_launcher(booted):
    unit = booted.path("/etc/systemd/system/mliy-notebook.service").read_text()
    root = booted.root
    for line in [
        "User=obrien",
        f"EnvironmentFile={root}/etc/mliy/notebook.env",
        f"ExecStart={root}/usr/local/bin/mliy-notebook",
        f"WorkingDirectory={root}/home/obrien",
        "Restart=on-failure",
        "WantedBy=multi-user.target",
    ]:
        assert line in unit.splitlines()
    launcher = booted.path("/usr/local/bin/mliy-notebook")
    assert os.access(launcher, os.X_OK)
    assert f"exec {booted.fakebin}/jupyterhub-singleuser --ip=127.0.0.1" in launcher.read_text()
    assert ["daemon-reload"] in booted.calls("systemctl")
    assert ["enable", "--now", "mliy-notebook.service"] in booted.calls("systemctl")


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="needs systemd-analyze")
def test_unit_file_passes_systemd_analyze_verify(booted):
    unit = booted.path("/etc/systemd/system/mliy-notebook.service")
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_fresh_volume_is_formatted_mounted_and_in_fstab(booted):
    device = str(booted.path("/dev/sdf"))
    assert booted.calls("mkfs.xfs") == [["-q", device]]
    assert [device, str(booted.path("/home"))] in booted.calls("mount")
    [line] = booted.path("/etc/fstab").read_text().splitlines()
    uuid, mount_point, fstype, options = line.split()[:4]
    assert uuid.startswith("UUID=") and len(uuid) > 10
    assert (mount_point, fstype, options) == ("/home", "xfs", "defaults,nofail")


def test_user_is_created_with_home_mode(booted):
    assert booted.calls("useradd") == [
        ["--create-home", "--home-dir", str(booted.path("/home/obrien")), "--shell", "/bin/bash"]
        + ["--user-group", "obrien"]
    ]
    home = booted.path("/home/obrien")
    assert stat.S_IMODE(home.stat().st_mode) == 0o750  # params win over replacement_tokens
    assert ["obrien:obrien", str(home)] in booted.calls("chown")


def test_stopped_instance_restarts_with_the_same_env(booted):
    # the demo's reboot of a stopped instance: the unit runs again from its files
    seen = booted.path("/home/obrien/singleuser-seen.json")
    assert stop_notebook(booted.root)
    seen.unlink()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{booted.port}/", timeout=2)
    start_notebook(booted.root, booted.env)
    for _ in range(100):
        if seen.exists() and seen.stat().st_size:
            break
        threading.Event().wait(0.05)
    assert booted.seen_by_server()["env"]["JUPYTERHUB_API_TOKEN"] == TOKEN


def test_failing_step_reports_failure_and_exits_nonzero(boot, service):
    b = boot()
    b.stub("useradd", "exit 1")
    b.run()
    assert b.result.returncode != 0
    steps = service.steps()
    assert [s["step"] for s in steps] == STEPS[:3] + ["creating the user"]
    assert steps[-1]["failed"] is True
    assert steps[-1]["percent"] == steps[-2]["percent"]
    assert not any(s["step"] == "done" for s in steps)
    assert not b.path("/etc/mliy/notebook.env").exists()
    assert TOKEN not in b.output


def test_unreadable_device_is_not_formatted(boot, service):
    b = boot()
    b.stub("blkid", "exit 4")
    b.run()
    assert b.result.returncode != 0
    assert service.steps()[-1] == {"step": "mounting the volume", "percent": 15, "failed": True}
    assert b.calls("mkfs.xfs") == [] and b.calls("mkfs.ext4") == []


def test_volume_with_a_filesystem_keeps_its_data(boot):
    b = boot()
    device = str(b.path("/dev/sdf"))
    subprocess.run([b.root / "stub-bin" / "mkfs.ext4", "-q", device], check=True)
    b.run()
    assert b.result.returncode == 0, b.output
    assert b.calls("mkfs.xfs") == [] and b.calls("mkfs.ext4") == [["-q", device]]
    assert " /home ext4 defaults,nofail" in b.path("/etc/fstab").read_text()


def test_no_volume(boot, service):
    b = boot(hub_env={"MLIY_VOLUME_DEVICE": ""})
    b.run()
    assert b.result.returncode == 0, b.output
    assert "mounting the volume" not in [s["step"] for s in service.steps()]
    assert b.calls("mount") == [] and b.calls("blkid") == []


def test_bare_ami_gets_a_venv(boot):
    b = boot(on_path=False)
    b.run()
    assert b.result.returncode == 0, b.output
    venv = b.path("/opt/mliy/venv")
    assert b.calls("python3") == [["-c", "import venv, ensurepip"], ["-m", "venv", str(venv)]]
    assert b.calls("dnf") == [] and b.calls("apt-get") == []
    assert b.calls("pip") == [["install", "-q", "--no-input", "jupyterhub>=5,<7", "jupyterlab"]]
    assert (
        f"exec {venv}/bin/jupyterhub-singleuser "
        in b.path("/usr/local/bin/mliy-notebook").read_text()
    )
    assert b.seen_by_server()["env"]["JUPYTERHUB_API_TOKEN"] == TOKEN


def test_python_without_venv_is_installed_first(boot):
    b = boot(on_path=False)
    stub = b.root / "stub-bin" / "python3"
    stub.rename(stub.with_name("python3-with-venv"))
    b.stub("python3", f'[ "$1" = -c ] && exit 1\nexec "{stub}-with-venv" "$@"')
    b.run()
    assert b.result.returncode == 0, b.output
    assert b.calls("dnf") == [["-y", "-q", "install", "python3", "python3-pip"]]
    assert b.calls("python3")[-1][:2] == ["-m", "venv"]


def test_bare_ami_without_python_packages_fails(boot, service):
    b = boot(on_path=False, params={"python_packages": "", "home_mode": "700"})
    b.run()
    assert b.result.returncode != 0
    assert service.steps()[-1] == {"step": "installing packages", "percent": 45, "failed": True}
    assert "python_packages is empty" in b.output


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        pytest.param("MLIY_NOTEBOOK_USER", "root", "not allowed", id="user-root"),
        pytest.param("MLIY_NOTEBOOK_USER", "Bob", "not allowed", id="user-uppercase"),
        pytest.param("MLIY_NOTEBOOK_USER", "a;touch pwned", "not allowed", id="user-semicolon"),
        pytest.param("MLIY_NOTEBOOK_USER", "x" * 33, "not allowed", id="user-too-long"),
        pytest.param("MLIY_NOTEBOOK_USER", "o'brien", "not allowed", id="user-quote"),
        pytest.param("MLIY_NOTEBOOK_USER", "", "is not set", id="user-empty"),
        pytest.param("MLIY_VOLUME_DEVICE", "/dev/sdf;touch pwned", "not a /dev path", id="dev"),
        pytest.param("MLIY_VOLUME_DEVICE", "sdf", "not a /dev path", id="dev-relative"),
        pytest.param("MLIY_VOLUME_MOUNT", "/home/../etc", "not an absolute", id="mount-dotdot"),
        pytest.param("MLIY_VOLUME_MOUNT", "$(touch pwned)", "not an absolute", id="mount-subst"),
        pytest.param("JUPYTERHUB_API_TOKEN", "", "is not set", id="no-token"),
    ],
)
def test_bad_environment_is_refused_before_anything_changes(boot, service, name, value, message):
    b = boot(hub_env={name: value})
    b.run()
    assert b.result.returncode != 0
    steps = service.steps()
    if name != "JUPYTERHUB_API_TOKEN":  # without a token the service cannot be told
        assert steps == [
            {"step": "checking the environment", "percent": 5, "failed": False},
            {"step": "checking the environment", "percent": 5, "failed": True},
        ]
    assert name in b.output and message in b.output
    assert stub_calls(b.root) == []
    assert not list(b.base.rglob("pwned"))


@pytest.mark.parametrize(
    ("params", "message"),
    [
        pytest.param({"home_mode": "7777777"}, "home_mode", id="mode-long"),
        pytest.param({"home_mode": "rwx"}, "home_mode", id="mode-letters"),
        pytest.param({"home_mode": "700\ntouch pwned"}, "home_mode", id="mode-newline"),
        pytest.param({"home_mode": "$(touch pwned)"}, "home_mode", id="mode-subst"),
    ],
)
def test_bad_params_fail_without_running_anything(boot, service, params, message):
    b = boot(params={**PARAMS, **params})
    b.run()
    assert b.result.returncode != 0
    assert message in b.output
    assert service.steps()[-1] == {
        "step": "checking the environment",
        "percent": 5,
        "failed": True,
    }
    assert stub_calls(b.root) == []
    assert not list(b.base.rglob("pwned"))


HEREDOC_ATTACKS = [
    pytest.param(
        "python_packages",
        "jupyterhub\nMLIY_PARAM\n)\ntouch pwned\n: $(cat <<'MLIY_PARAM'",
        id="delimiter-line",
    ),
    pytest.param("python_packages", "MLIY_PARAM) ; touch pwned", id="comsub-close"),
    pytest.param("home_mode", "700\nMLIY_PARAM\n)\ntouch pwned\n: $(: <<'MLIY_PARAM'", id="mode"),
]


@pytest.mark.parametrize("token, value", HEREDOC_ATTACKS)
def test_a_param_that_ends_the_here_document_is_refused(boot, token, value):
    b = boot()
    script = SCRIPT.read_text()
    # pasted in as MLiy did, the value runs a command as root on the instance
    pasted = assemble(script.replace("{{{" + token + "}}}", value), b.hub_env)
    b.user_data.write_text(build_user_data(pasted, PARAMS, {}, b.hub_env))
    b.run()
    assert list(b.cwd.glob("pwned"))
    (b.cwd / "pwned").unlink()
    # the spawner refuses to render it, naming the token; nothing runs
    with pytest.raises(UserDataError, match=r"^\{\{\{" + token + r"\}\}\}: .*'MLIY_PARAM'"):
        build_user_data(script, {**PARAMS, token: value}, {}, b.hub_env)
    assert not list(b.base.rglob("pwned"))


def test_bad_local_port_is_refused(boot, service):
    b = boot()
    b.env["MLIY_LOCAL_PORT"] = "65536"
    b.run()
    assert b.result.returncode != 0
    assert "port 65536 is not a port number" in b.output
    assert service.steps()[-1]["failed"] is True


def test_commands_run_by_the_bootstrap_do_not_see_the_token(boot):
    b = boot()
    dump = b.base / "chown-env"
    b.stub("chown", f'env > "{dump}"')
    b.run()
    assert b.result.returncode == 0, b.output
    seen = dump.read_text()
    assert "MLIY_LOCAL_ROOT=" in seen  # the dump works
    assert TOKEN not in seen
    for name in b.hub_env:
        assert f"{name}=" not in seen
    assert "MLIY_ENV_NAMES=" not in seen


def test_reporting_failures_do_not_stop_the_bootstrap(boot):
    refusing = ProgressService(status=403)
    try:
        b = boot(service_url=refusing.url).run()
    finally:
        refusing.close()
    assert b.result.returncode == 0, b.output
    # the first report is retried (the hub may not know the instance yet), then dropped;
    # later ones are not retried on a refusal
    reported = [s["step"] for s in refusing.steps()]
    assert [step for step, _ in itertools.groupby(reported)] == STEPS
    assert reported.count(STEPS[0]) == 6
    assert reported.count("done") == 1
    assert 'could not report "done"' in b.output
    assert TOKEN not in b.output


def test_unreachable_service_does_not_stop_the_bootstrap(boot):
    b = boot(service_url=f"http://127.0.0.1:{free_port()}/services/mliy/").run()
    assert b.result.returncode == 0, b.output
    assert TOKEN not in b.output


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param('A="x y"\n', {"A": "x y"}, id="double"),
        pytest.param("A='x \\ \"y'\n", {"A": 'x \\ "y'}, id="single-literal"),
        pytest.param('A="a\\"b\\\\c\\`d\\$e\\nf"', {"A": 'a"b\\c`d$e\\nf'}, id="escapes"),
        pytest.param('A="line1\nline2"\nB=2', {"A": "line1\nline2", "B": "2"}, id="newline"),
        pytest.param("A=  spaced value  \n", {"A": "spaced value"}, id="unquoted-trim"),
        pytest.param("A=one\\\n two\n", {"A": "one two"}, id="continuation"),
        pytest.param("# c\n; c\n  B = 1\nnoequals\nC=\n", {"B": "1", "C": ""}, id="comments"),
        pytest.param('A="x"y\n', {"A": "xy"}, id="quote-then-text"),
    ],
)
def test_read_environment_file_follows_systemd(tmp_path, text, expected):
    path = tmp_path / "env"
    path.write_text(text)
    assert read_environment_file(path) == expected
