"""Checks of progress reports, as pure functions.

Both forms of a report end in :class:`ProgressReport` or a :class:`ReportError` whose
message names the field, shows the value (``repr``, so control characters stay visible
and harmless) and says what is allowed.

- JSON: ``{"step": "Installing packages", "percent": 40, "failed": false}``
- MLiy's URL form: ``ajax/progress/<instance-id>/<step>(<percent>)``
"""

import json
import re
from dataclasses import dataclass

from ..store import MAX_STEP_LENGTH
from ..util import control_character, shorten

FIELDS = ("step", "percent", "failed")
_MLIY_PATH = re.compile(r"^(?P<step>.*)\((?P<percent>[^()]*)\)$", re.DOTALL)
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class ReportError(ValueError):
    """A progress report that cannot be accepted (HTTP 400); ``str()`` is the message."""


@dataclass(frozen=True)
class ProgressReport:
    step: str
    percent: int
    failed: bool = False


def check_step(step):
    """The step text: a non-blank printable string of at most 200 characters."""
    if not isinstance(step, str):
        raise ReportError(f"step is {shorten(step)}; allowed: a string")
    if not step.strip():
        raise ReportError(f"step is {shorten(step)}; allowed: a non-empty text")
    if len(step) > MAX_STEP_LENGTH:
        raise ReportError(
            f"step is {len(step)} characters long ({shorten(step)}); "
            f"allowed: at most {MAX_STEP_LENGTH} characters"
        )
    bad = control_character(step)
    if bad is not None:
        raise ReportError(
            f"step {shorten(step)} contains the character {bad!r}; "
            "allowed: printable characters only (no control characters or line breaks)"
        )
    return step


def check_percent(percent):
    """The percent: an integer from 0 to 100 (not a bool, float or string)."""
    if isinstance(percent, bool) or not isinstance(percent, int):
        raise ReportError(f"percent is {shorten(percent)}; allowed: an integer from 0 to 100")
    if not 0 <= percent <= 100:
        raise ReportError(f"percent is {percent}; allowed: an integer from 0 to 100")
    return percent


def check_failed(failed):
    if not isinstance(failed, bool):
        raise ReportError(f"failed is {shorten(failed)}; allowed: true or false")
    return failed


def parse_json_report(body):
    """A :class:`ProgressReport` from a JSON request body (bytes)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ReportError(f"body is not UTF-8 ({e.reason} at byte {e.start})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ReportError(
            f"body is not JSON ({e.msg} at line {e.lineno} column {e.colno}); "
            'allowed: {"step": "...", "percent": 0-100, "failed": false}'
        ) from None
    if not isinstance(data, dict):
        raise ReportError(
            f"body is {shorten(data)}; allowed: an object with the fields step, percent, failed"
        )
    unexpected = sorted(set(data) - set(FIELDS))
    if unexpected:
        raise ReportError(
            f"unexpected field(s) {', '.join(shorten(k) for k in unexpected)}; "
            f"allowed fields: {', '.join(FIELDS)}"
        )
    for name in ("step", "percent"):
        if name not in data:
            raise ReportError(f"{name} is missing; it is required")
    return ProgressReport(
        step=check_step(data["step"]),
        percent=check_percent(data["percent"]),
        failed=check_failed(data.get("failed", False)),
    )


def parse_mliy_report(tail, failed=None):
    """A :class:`ProgressReport` from MLiy's URL form.

    ``tail`` is the URL-decoded path after ``ajax/progress/<instance-id>/``:
    ``<step>(<percent>)``; the percent is the last parenthesised group, so a step may
    contain parentheses itself. ``failed`` is the optional ``?failed=`` argument.
    """
    match = _MLIY_PATH.match(tail)
    if not match:
        raise ReportError(
            f"progress path {shorten(tail)} does not end in (<percent>); "
            "allowed: <step>(<percent>), for example 'Installing packages(40)'"
        )
    raw = match.group("percent")
    if not re.fullmatch(r"[0-9]{1,3}", raw):
        raise ReportError(f"percent is {shorten(raw)}; allowed: an integer from 0 to 100")
    if failed is None:
        flag = False
    elif failed.strip().lower() in _TRUE:
        flag = True
    elif failed.strip().lower() in _FALSE:
        flag = False
    else:
        raise ReportError(f"failed is {shorten(failed)}; allowed: true, false, 1 or 0")
    return ProgressReport(
        step=check_step(match.group("step")), percent=check_percent(int(raw)), failed=flag
    )
