"""One-time bootstrap codes: how an instance gets its server's API token without the
token ever being written where AWS lets others read it.

User data is readable by anyone with ``ec2:DescribeInstanceAttribute``. So the spawner
puts only a one-time code in it (:func:`new_code`, 192 random bits) and keeps, in the
store, the code's hash (:func:`code_id`) and the API token sealed under a key derived
from the code (:func:`seal`, Fernet). The store alone gives nothing: without the code
the sealed token cannot be opened. The instance posts the code to the ``mliy`` service
(``POST api/bootstrap/<instance-id>``), which checks it (once, unexpired, bound to
that instance, from its address), opens the token (:func:`open_sealed`) and deletes
the sealed copy. Pure functions; no I/O.
"""

import base64
import hashlib
import secrets

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

#: How long a code may wait for its exchange, in seconds (MLiySpawner.bootstrap_code_ttl).
DEFAULT_TTL = 20 * 60

#: The longest code the service reads (a code is 32 characters).
MAX_CODE_LENGTH = 64


class SealError(ValueError):
    """The sealed token cannot be opened with this code."""


def new_code():
    """A fresh code: 24 random bytes, URL-safe base64 (32 characters)."""
    return secrets.token_urlsafe(24)


def code_id(code):
    """What the store keeps to find a code: a hash that does not reveal it."""
    return hashlib.sha256(b"mliy-bootstrap-id\0" + code.encode()).hexdigest()


def _fernet(code):
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"mliy-bootstrap-seal").derive(
        code.encode()
    )
    return Fernet(base64.urlsafe_b64encode(key))


def seal(code, token):
    """``token`` encrypted and authenticated under a key only ``code`` gives."""
    return _fernet(code).encrypt(token.encode()).decode()


def open_sealed(code, sealed):
    """The token :func:`seal` sealed with ``code``; :class:`SealError` otherwise."""
    try:
        return _fernet(code).decrypt(sealed.encode()).decode()
    except (InvalidToken, ValueError) as e:
        raise SealError("the code does not open this token") from e
