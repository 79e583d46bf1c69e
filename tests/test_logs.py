"""configure_logging: levels per mliy.* logger, one file each, idempotent, checked input."""

import logging
import os
import stat

import pytest

from mliy_spawner.logs import AREAS, configure_logging


@pytest.fixture(autouse=True)
def _restore_loggers():
    saved = {a: (logging.getLogger(f"mliy.{a}").level) for a in AREAS}
    yield
    configure_logging()  # drop the file handlers
    for area, level in saved.items():
        logging.getLogger(f"mliy.{area}").setLevel(level)


@pytest.fixture
def open_umask():
    """The usual umask (022), under which files come out 0644 and folders 0755."""
    saved = os.umask(0o022)
    yield
    os.umask(saved)


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_log_files_are_0600_and_created_folders_0700(tmp_path, open_umask):
    existing = tmp_path / "var"
    existing.mkdir(mode=0o755)
    configure_logging(log_dir=str(existing / "mliy" / "logs"))
    logging.getLogger("mliy.launch").info("launch %s", "alice")
    assert mode(existing) == 0o755  # not created here: left alone
    assert mode(existing / "mliy") == 0o700
    assert mode(existing / "mliy" / "logs") == 0o700
    files = sorted((existing / "mliy" / "logs").iterdir())
    assert [p.name for p in files] == [f"{a}.log" for a in sorted(AREAS)]
    assert {p.name: mode(p) for p in files} == {p.name: 0o600 for p in files}
    assert "launch alice" in (existing / "mliy" / "logs" / "launch.log").read_text()


def test_existing_log_files_keep_their_mode(tmp_path, open_umask):
    (tmp_path / "aws.log").write_text("earlier\n")
    (tmp_path / "aws.log").chmod(0o640)
    configure_logging(log_dir=str(tmp_path))
    logging.getLogger("mliy.aws").info("later")
    assert mode(tmp_path / "aws.log") == 0o640
    assert (tmp_path / "aws.log").read_text().startswith("earlier\n")
    assert mode(tmp_path / "auth.log") == 0o600


def test_each_logger_writes_its_own_file(tmp_path):
    configure_logging({"aws": "DEBUG", "mliy.service": "WARNING"}, str(tmp_path / "logs"))
    logging.getLogger("mliy.aws").debug("call %s", "DescribeStacks")
    logging.getLogger("mliy.auth").info("login %s", "alice")
    logging.getLogger("mliy.launch").debug("hidden at INFO")
    logging.getLogger("mliy.service").info("hidden at WARNING")
    logging.getLogger("mliy.service").warning("refused")
    files = {p.name: p.read_text() for p in (tmp_path / "logs").iterdir()}
    assert set(files) == {"auth.log", "aws.log", "launch.log", "service.log"}
    assert "DescribeStacks" in files["aws.log"] and "login" not in files["aws.log"]
    assert "login alice" in files["auth.log"]
    assert files["launch.log"] == ""
    assert "refused" in files["service.log"] and "hidden" not in files["service.log"]


def test_calling_again_does_not_double_lines(tmp_path):
    for _ in range(3):
        configure_logging({}, str(tmp_path))
    logging.getLogger("mliy.launch").info("once")
    assert (tmp_path / "launch.log").read_text().count("once") == 1


def test_without_folder_only_levels_change(tmp_path):
    configure_logging({"launch": 10}, str(tmp_path))
    configure_logging({"launch": "ERROR"})
    logger = logging.getLogger("mliy.launch")
    assert logger.level == logging.ERROR
    assert [h for h in logger.handlers if isinstance(h, logging.FileHandler)] == []


@pytest.mark.parametrize(
    ("levels", "message"),
    [
        ({"boto": "INFO"}, "unknown logger 'boto'"),
        ({"mliy.web": "INFO"}, "unknown logger 'mliy.web'"),
        ({"aws": "VERBOSE"}, "'VERBOSE'; one of DEBUG"),
        ({"aws": True}, "True"),
        ({"aws": None}, "None"),
        (["aws"], "must be a dict"),
    ],
    ids=["unknown-area", "unknown-logger", "unknown-level", "bool-level", "none-level", "list"],
)
def test_bad_levels_are_refused(levels, message):
    with pytest.raises(ValueError) as info:
        configure_logging(levels)
    assert message in str(info.value)


async def test_a_spawn_and_a_stop_are_in_launch_log(make_spawner, tmp_path):
    log_dir = tmp_path / "logs"
    spawner = make_spawner(log_dir=str(log_dir))
    await spawner._run_apply_user_options({})
    await spawner.start()
    await spawner.stop()
    lines = (log_dir / "launch.log").read_text()
    assert f"alice: Creating stack {spawner.stack.stack_name}" in lines
    assert f"alice: Instance {spawner.stack.instance_id} is running" in lines
    assert f"Stopping instance {spawner.stack.instance_id} of alice" in lines
    assert "CreateStack" in (log_dir / "aws.log").read_text()
