"""Checks of every value a request to the service carries, as pure functions.

Each check ends in a value or a :class:`ReportError` whose message names the field,
shows the value (``repr``, so control characters stay visible and harmless) and says
what is allowed. Nothing here raises anything else, whatever the input: huge numbers,
deep nesting, ``NaN``, bad UTF-8 and oversized bodies are all a ``ReportError`` (400).

- JSON: ``{"step": "Installing packages", "percent": 40, "failed": false}``
- MLiy's URL form: ``ajax/progress/<instance-id>/<step>(<percent>)``
- instance ids, query arguments, URL parts (:func:`decode_text`) and the
  ``Authorization`` header (:func:`token_from_header`)
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
#: EC2's instance ids: ``i-`` and 8 (older) or 17 hexadecimal digits
_INSTANCE_ID = re.compile(r"i-(?:[0-9a-f]{8}|[0-9a-f]{17})")
#: The largest JSON report (bytes). A report of 200 characters, each sent as a
#: ``\uXXXX\uXXXX`` pair, is under 2.5 KiB; larger bodies up to the server's
#: ``MAX_BODY_SIZE`` (64 KiB) are refused here with a message naming the body.
MAX_REPORT_BYTES = 8 * 1024
#: A report is one flat object; nesting is refused before parsing, so neither the
#: parser nor ``repr`` ever recurses deeply.
MAX_NESTING = 8
#: Integers longer than this are kept as text (Python refuses to convert more than
#: 4,300 digits, and no field needs more than three).
MAX_DIGITS = 20
#: Tokens the hub issues are 32 to 64 characters; anything longer, or with characters
#: no token has, is refused without asking the hub.
MAX_TOKEN_LENGTH = 256
_TOKEN = re.compile(r"[A-Za-z0-9._~+/=-]+")
_ALLOWED_REPORT = '{"step": "...", "percent": 0-100, "failed": false}'


class ReportError(ValueError):
    """A request value that cannot be accepted (HTTP 400); ``str()`` is the message."""


@dataclass(frozen=True)
class ProgressReport:
    step: str
    percent: int
    failed: bool = False


class Unparsed:
    """A JSON number or constant kept as its text (a huge integer, ``NaN``, ``Infinity``),
    so the check of its field refuses it by name."""

    def __init__(self, text):
        self.text = text

    def __repr__(self):
        if self.text.lstrip("-").isdigit():
            return f"<a number of {len(self.text.lstrip('-'))} digits>"
        return self.text


def _bounded_int(text):
    return int(text) if len(text) <= MAX_DIGITS else Unparsed(text)


def _unique_fields(pairs):
    names = [name for name, _ in pairs]
    for name in names:
        if names.count(name) > 1:
            raise ReportError(
                f"field {shorten(name)} appears {names.count(name)} times; allowed: once"
            )
    return dict(pairs)


def nesting(text):
    """How deeply ``[`` and ``{`` nest in the JSON ``text`` (outside strings)."""
    depth = deepest = 0
    in_string = escaped = False
    for c in text:
        if in_string:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif c in "]}":
            depth -= 1
    return deepest


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
    """The percent: an integer from 0 to 100 (not a bool, float, string, NaN or huge)."""
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
    if len(body) > MAX_REPORT_BYTES:
        raise ReportError(
            f"body is {len(body)} bytes long; allowed: at most {MAX_REPORT_BYTES} bytes"
        )
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ReportError(f"body is not UTF-8 ({e.reason} at byte {e.start})") from None
    depth = nesting(text)
    if depth > MAX_NESTING:
        raise ReportError(f"body nests {depth} levels deep; allowed: one object, {_ALLOWED_REPORT}")
    try:
        data = json.loads(
            text,
            parse_int=_bounded_int,
            parse_constant=Unparsed,
            object_pairs_hook=_unique_fields,
        )
    except json.JSONDecodeError as e:
        raise ReportError(
            f"body is not JSON ({e.msg} at line {e.lineno} column {e.colno}); "
            f"allowed: {_ALLOWED_REPORT}"
        ) from None
    except ReportError:
        raise
    except (ValueError, RecursionError) as e:  # a last line: never a 500
        raise ReportError(f"body cannot be read as JSON ({type(e).__name__})") from None
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


def parse_failed_flag(failed):
    """MLiy's ``?failed=`` argument: True for 1/true/yes/on, False for 0/false/no/off."""
    if failed is None:
        return False
    if failed.strip().lower() in _TRUE:
        return True
    if failed.strip().lower() in _FALSE:
        return False
    raise ReportError(f"failed is {shorten(failed)}; allowed: true, false, 1 or 0")


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
    flag = parse_failed_flag(failed)
    return ProgressReport(
        step=check_step(match.group("step")), percent=check_percent(int(raw)), failed=flag
    )


def check_instance_id(instance_id):
    """An EC2 instance id (``i-`` and 8 or 17 lowercase hex digits)."""
    if not isinstance(instance_id, str) or not _INSTANCE_ID.fullmatch(instance_id):
        raise ReportError(
            f"instance id {shorten(instance_id)} is not an EC2 instance id; "
            "allowed: i- and 8 or 17 hexadecimal digits, e.g. i-0123456789abcdef0"
        )
    return instance_id


def check_query(arguments, allowed=()):
    """Refuse query arguments not in ``allowed`` and any given more than once.

    ``arguments``: tornado's ``request.query_arguments`` (name -> list of values).
    """
    unknown = sorted(set(arguments) - set(allowed))
    if unknown:
        names = ", ".join(shorten(name) for name in unknown)
        where = f"only {', '.join(allowed)}" if allowed else "none"
        raise ReportError(f"query argument(s) {names} are not allowed here; allowed: {where}")
    for name in allowed:
        if len(arguments.get(name, ())) > 1:
            raise ReportError(
                f"query argument {name} is given {len(arguments[name])} times; allowed: once"
            )


def decode_text(value, name):
    """``value`` (bytes from the URL, already percent-decoded) as text; ``name`` the field."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ReportError(
            f"{name} is not UTF-8 ({e.reason} at byte {e.start}: {shorten(value)})"
        ) from None


def token_from_header(value):
    """The token of an ``Authorization: token <t>`` (or ``bearer``) header value.

    Returns ``(token, problem)``: the token, or ``None`` and why the header holds none.
    """
    scheme, _, token = (value or "").strip().partition(" ")
    token = token.strip()
    if scheme.lower() not in ("token", "bearer") or not token:
        return None, "no token: send the header 'Authorization: token <API token>'"
    if len(token) > MAX_TOKEN_LENGTH or not _TOKEN.fullmatch(token):
        return None, (
            f"the Authorization header holds no well-formed token ({len(token)} characters; "
            f"allowed: up to {MAX_TOKEN_LENGTH} letters, digits and ._~+/=-)"
        )
    return token, None
