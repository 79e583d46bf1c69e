"""configure_logging: levels per mliy.* logger, one file each, idempotent, checked input."""

import logging

import pytest

from mliy_spawner.logs import AREAS, configure_logging


@pytest.fixture(autouse=True)
def _restore_loggers():
    saved = {a: (logging.getLogger(f"mliy.{a}").level) for a in AREAS}
    yield
    configure_logging()  # drop the file handlers
    for area, level in saved.items():
        logging.getLogger(f"mliy.{area}").setLevel(level)


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
