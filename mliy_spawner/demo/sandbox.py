"""Run the instance bootstrap script (``userdata/mliy-bootstrap.sh``) on this machine.

The embedded demo and the tests run the real user data in a sandbox folder instead of on
an EC2 instance. The script's local mode (``MLIY_LOCAL_MODE=1``) prefixes every file path
with ``MLIY_LOCAL_ROOT``; this module provides that folder and stubs of the system
commands the script calls (mount, mkfs, blkid, useradd, id, chown, dnf, apt-get, python3,
systemctl), so nothing outside the folder changes.

- :func:`prepare_sandbox` creates the folder and returns the environment to run the
  script with (add ``MLIY_LOCAL_INSTANCE_ID`` and ``MLIY_LOCAL_PORT``).
- The ``systemctl`` stub starts ``mliy-notebook.service`` the way systemd would: its
  ``ExecStart`` in the background with its ``EnvironmentFile`` loaded (parsed by
  :func:`read_environment_file`), pid in ``run/<unit>.pid``, output in
  ``var/log/<unit>.log``.
- :func:`start_notebook` and :func:`stop_notebook` do the same from Python: the demo's
  "reboot" of a stopped instance.
- Every stub call is appended to ``stub-calls.log`` as a JSON list ``[command, *args]``
  (:func:`stub_calls` reads them back).

Layout under ``root``: ``stub-bin/`` (the stubs), ``stub-calls.log``, ``run/`` (pid files
and the stubs' state), ``var/log/``, ``dev/`` (empty files standing in for devices), and
whatever the script writes (``etc/mliy/notebook.env``, ``etc/systemd/system/…``, ``home/…``).
"""

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

UNIT = "mliy-notebook.service"
STUB_COMMANDS = (
    "apt-get",
    "blkid",
    "chown",
    "dnf",
    "id",
    "mkfs.ext4",
    "mkfs.xfs",
    "mount",
    "python3",
    "systemctl",
    "umount",
    "useradd",
)
_PACKAGE_PARENT = Path(__file__).resolve().parents[2]
_STATE = "run/sandbox-state.json"  # users, filesystems, enabled units, the sandbox PATH
_children = {}  # pid -> Popen, for servers this process started (so it can reap them)


def prepare_sandbox(root, *, python_bin_dir, devices=("/dev/sdf",)):
    """Create the sandbox folder ``root`` and return the environment to run the script with.

    ``python_bin_dir`` is the folder with ``jupyterhub-singleuser`` (the "AMI's" copy,
    and what the stubbed ``pip install`` links to). ``devices`` become empty files under
    ``root/dev`` so the script finds the extra volume; ``root/etc/fstab`` starts empty.
    The environment holds only PATH (stubs first, then ``python_bin_dir``, then this
    process's PATH), LANG, HOME and the local-mode variables: nothing else of this
    process (the hub's) leaks in.
    """
    root = Path(root).resolve()
    stub_bin = root / "stub-bin"
    for folder in (stub_bin, root / "run", root / "var/log", root / "root", root / "dev"):
        folder.mkdir(parents=True, exist_ok=True)
    (root / "etc").mkdir(exist_ok=True)
    (root / "etc/fstab").touch()  # every AMI has one
    for device in devices:
        path = root / device.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    for name in STUB_COMMANDS:
        _write_stub(stub_bin / name, name, root)
    path = os.pathsep.join([str(stub_bin), str(python_bin_dir), os.environ.get("PATH", os.defpath)])
    env = {
        "PATH": path,
        "LANG": "C.UTF-8",
        "HOME": str(root / "root"),
        "MLIY_LOCAL_MODE": "1",
        "MLIY_LOCAL_ROOT": str(root),
    }
    state = _load_state(root)
    state.update(python_bin_dir=str(python_bin_dir), path=path)
    _save_state(root, state)
    return env


def start_notebook(root, env=None, unit=UNIT):
    """Start ``unit`` from its unit file, as the ``systemctl`` stub does; return its pid.

    Nothing happens when it already runs. The process gets PATH and LANG from ``env``
    (default: the sandbox's), HOME = the unit's WorkingDirectory, and the variables of
    its EnvironmentFile, nothing else. Raises FileNotFoundError when the bootstrap has
    not written the unit.
    """
    root = Path(root).resolve()
    pid = notebook_pid(root, unit)
    if pid:
        return pid
    settings = _unit_settings(root / "etc/systemd/system" / unit)
    base = env or {"PATH": _load_state(root).get("path", os.defpath)}
    process_env = {"PATH": base.get("PATH", os.defpath), "LANG": base.get("LANG", "C.UTF-8")}
    workdir = settings.get("WorkingDirectory")
    if workdir:
        process_env["HOME"] = workdir
    env_file = settings.get("EnvironmentFile", "")
    if env_file:
        optional = env_file.startswith("-")
        env_path = Path(env_file.lstrip("-"))
        if env_path.exists() or not optional:
            process_env.update(read_environment_file(env_path))
    log_path = root / "var/log" / f"{Path(unit).stem}.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            shlex.split(settings["ExecStart"]),
            env=process_env,
            cwd=workdir if workdir and Path(workdir).is_dir() else root,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _children[process.pid] = process
    _pid_file(root, unit).write_text(f"{process.pid}\n")
    return process.pid


def stop_notebook(root, unit=UNIT, timeout=10):
    """Stop ``unit`` (SIGTERM to its process group, SIGKILL after ``timeout`` s).

    Returns True when it was running.
    """
    root = Path(root).resolve()
    pid = notebook_pid(root, unit)
    _pid_file(root, unit).unlink(missing_ok=True)
    if not pid:
        return False
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not _alive(pid):
            break
    return True


def notebook_pid(root, unit=UNIT):
    """The pid of the running ``unit``, or None."""
    try:
        pid = int(_pid_file(Path(root), unit).read_text())
    except (FileNotFoundError, ValueError):
        return None
    return pid if _alive(pid) else None


def stub_calls(root):
    """Every stub call so far, as ``[command, *args]`` lists, oldest first."""
    try:
        lines = (Path(root) / "stub-calls.log").read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in lines if line]


def read_environment_file(path):
    """Parse a systemd ``EnvironmentFile`` the way systemd does; return ``{name: value}``.

    Lines ``NAME=value``; ``#`` or ``;`` start comments; unquoted values lose surrounding
    whitespace and take ``\\`` escapes (``\\`` + newline joins lines); single quotes keep
    everything up to the next ``'``; double quotes keep everything up to the next ``"``,
    where ``\\`` escapes ``"``, ``\\``, backtick and ``$`` (and joins lines before a
    newline) and stays in place before any other character.
    """
    return _parse_environment(Path(path).read_text(encoding="utf-8"))


# ---- stubs ------------------------------------------------------------------------------


def _write_stub(path, name, root):
    path.write_text(
        f"#!{sys.executable}\n"
        "# stub written by mliy_spawner.demo.sandbox\n"
        "import sys\n"
        f"sys.path.insert(0, {str(_PACKAGE_PARENT)!r})\n"
        "from mliy_spawner.demo.sandbox import run_stub\n"
        f"sys.exit(run_stub({name!r}, {str(root)!r}, sys.argv[1:]))\n"
    )
    path.chmod(0o755)


def run_stub(name, root, args):
    """Entry point of every stub script: log the call, then act like ``name``.

    Commands without a handler (mount, umount, chown, dnf, apt-get) only log.
    """
    root = Path(root)
    if name == "venv-python" and args[:2] == ["-m", "pip"]:
        logged = ["pip", *args[2:]]
    else:
        logged = [name, *args]
    with open(root / "stub-calls.log", "a", encoding="utf-8") as log:
        log.write(json.dumps(logged) + "\n")
    handler = _HANDLERS.get(name)
    return handler(root, args) if handler else 0


def _positional(args, with_value=()):
    """Arguments that are not options (skipping the values of options in ``with_value``)."""
    found, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg in with_value:
            skip = True
        elif arg == "--" or arg.startswith("-"):
            continue
        else:
            found.append(arg)
    return found


def _stub_id(root, args):
    names = _positional(args)
    if not names:
        os.execv(_real("id", root), ["id", *args])
    users = _load_state(root).get("users", [])
    if names[-1] not in users:
        print(f"id: '{names[-1]}': no such user", file=sys.stderr)
        return 1
    uid = 2000 + users.index(names[-1])
    print(uid if {"-u", "-g"} & set(args) else f"uid={uid}({names[-1]}) gid={uid}")
    return 0


def _stub_useradd(root, args):
    value_opts = {"-d", "--home-dir", "-s", "--shell", "-g", "--gid", "-u", "--uid"}
    value_opts |= {"-c", "--comment", "-G", "--groups", "-k", "--skel"}
    name = _positional(args, value_opts)[-1]
    state = _load_state(root)
    if name in state.setdefault("users", []):
        print(f"useradd: user '{name}' already exists", file=sys.stderr)
        return 9
    state["users"].append(name)
    _save_state(root, state)
    if {"-m", "--create-home"} & set(args):
        for flag in ("-d", "--home-dir"):
            if flag in args:
                Path(args[args.index(flag) + 1]).mkdir(parents=True, exist_ok=True)
    return 0


def _stub_mkfs(root, args, fstype):
    state = _load_state(root)
    state.setdefault("filesystems", {})[_positional(args)[-1]] = {
        "TYPE": fstype,
        "UUID": str(uuid.uuid4()),
    }
    _save_state(root, state)
    return 0


def _stub_blkid(root, args):
    filesystem = _load_state(root).get("filesystems", {}).get(_positional(args, {"-o", "-s"})[-1])
    if not filesystem:
        return 2  # blkid's "nothing found"
    tag = args[args.index("-s") + 1] if "-s" in args else "TYPE"
    print(filesystem.get(tag, ""))
    return 0


def _stub_python3(root, args):
    if args[:2] == ["-m", "venv"]:
        bin_dir = Path(_positional(args[2:])[-1]) / "bin"
        bin_dir.mkdir(parents=True, exist_ok=True)
        for python in ("python", "python3"):
            _write_stub(bin_dir / python, "venv-python", root)
        return 0
    os.execv(sys.executable, [sys.executable, *args])


def _stub_venv_python(root, args):
    if args[:3] != ["-m", "pip", "install"]:
        os.execv(sys.executable, [sys.executable, *args])
    real = Path(_load_state(root)["python_bin_dir"]) / "jupyterhub-singleuser"
    if real.exists():
        shim = Path(sys.argv[0]).parent / "jupyterhub-singleuser"
        shim.write_text(f'#!/bin/sh\nexec {shlex.quote(str(real))} "$@"\n')
        shim.chmod(0o755)
    return 0


def _stub_systemctl(root, args):
    command = next((a for a in args if not a.startswith("-")), "")
    units = _positional(args)[1:]
    state = _load_state(root)
    enabled = set(state.get("enabled", []))
    if command == "enable":
        enabled |= set(units)
    elif command == "disable":
        enabled -= set(units)
    state["enabled"] = sorted(enabled)
    _save_state(root, state)
    if command in ("stop", "restart") or (command == "disable" and "--now" in args):
        for unit in units:
            stop_notebook(root, unit)
    if command in ("start", "restart") or (command == "enable" and "--now" in args):
        for unit in units:
            start_notebook(root, None, unit)
    if command == "is-active":
        active = all(notebook_pid(root, unit) for unit in units)
        print("active" if active else "inactive")
        return 0 if active else 3
    return 0


_HANDLERS = {
    "blkid": _stub_blkid,
    "id": _stub_id,
    "mkfs.ext4": lambda root, args: _stub_mkfs(root, args, "ext4"),
    "mkfs.xfs": lambda root, args: _stub_mkfs(root, args, "xfs"),
    "python3": _stub_python3,
    "systemctl": _stub_systemctl,
    "useradd": _stub_useradd,
    "venv-python": _stub_venv_python,
}


# ---- helpers ----------------------------------------------------------------------------


def _real(name, root):
    """The real ``name`` on PATH, skipping the stubs."""
    stub_bin = str(Path(root).resolve() / "stub-bin")
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p != stub_bin)
    return shutil.which(name, path=path) or f"/usr/bin/{name}"


def _load_state(root):
    try:
        return json.loads((Path(root) / _STATE).read_text())
    except FileNotFoundError:
        return {}


def _save_state(root, state):
    path = Path(root) / _STATE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    tmp.replace(path)


def _pid_file(root, unit):
    return Path(root) / "run" / f"{Path(unit).stem}.pid"


def _alive(pid):
    child = _children.get(pid)
    if child is not None:
        if child.poll() is None:
            return True
        _children.pop(pid, None)
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # an exited child nobody has reaped yet is a zombie: not running
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return True


def _unit_settings(unit_file):
    settings = {}
    for line in Path(unit_file).read_text(encoding="utf-8").splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.lstrip().startswith(("#", ";", "[")):
            settings[key.strip()] = value.strip()
    return settings


_WHITESPACE = " \t\n\r"
_NEWLINE = "\n\r"


def _append(text, trailing_ws, c):
    """``text + c``, and where its trailing whitespace starts (None: there is none).

    ``trailing_ws`` is where the trailing whitespace of ``text`` starts (None: none).
    """
    if c not in _WHITESPACE:
        return text + c, None
    return text + c, len(text) if trailing_ws is None else trailing_ws


def _parse_environment(text):
    env = {}
    state, key, value = "pre_key", "", ""
    key_ws = value_ws = None  # where trailing whitespace starts in key / unquoted value

    def push():
        env[key[:key_ws] if key_ws is not None else key] = value

    for c in text:
        if state == "pre_key":
            if c in "#;":
                state = "comment"
            elif c not in _WHITESPACE:
                state, key, key_ws = "key", c, None
        elif state == "key":
            if c in _NEWLINE:
                state = "pre_key"
            elif c == "=":
                state, value, value_ws = "pre_value", "", None
            else:
                key, key_ws = _append(key, key_ws, c)
        elif state == "pre_value":
            if c in _NEWLINE:
                push()
                state = "pre_key"
            elif c in "'\"":
                state = "single" if c == "'" else "double"
            elif c == "\\":
                state = "value_escape"
            elif c not in _WHITESPACE:
                state, value = "value", value + c
        elif state == "value":
            if c in _NEWLINE:
                if value_ws is not None:
                    value = value[:value_ws]
                push()
                state = "pre_key"
            elif c == "\\":
                state, value_ws = "value_escape", None
            else:
                value, value_ws = _append(value, value_ws, c)
        elif state == "value_escape":
            state = "value"
            if c not in _NEWLINE:
                value += c
        elif state == "single":
            if c == "'":
                state = "pre_value"
            else:
                value += c
        elif state == "double":
            if c == '"':
                state = "pre_value"
            elif c == "\\":
                state = "double_escape"
            else:
                value += c
        elif state == "double_escape":
            state = "double"
            if c in '"\\`$':
                value += c
            elif c != "\n":
                value += "\\" + c
        elif state == "comment":
            if c == "\\":
                state = "comment_escape"
            elif c in _NEWLINE:
                state = "pre_key"
        elif state == "comment_escape":
            state = "pre_key" if c in _NEWLINE else "comment"
    if state not in ("pre_key", "key", "comment", "comment_escape"):
        if state == "value" and value_ws is not None:
            value = value[:value_ws]
        push()
    return env
