"""Time-based one-time passwords (RFC 6238 over RFC 4226's HOTP): HMAC-SHA1, 6 digits, 30 s
steps, the parameters every authenticator app (Google/Microsoft Authenticator, 阿里云 MFA,
FreeOTP) reads from an `otpauth://` URI. Pure functions; the use cases are in signin.py.

A code is accepted for the current step and one step either side (clock drift of a phone),
and each accepted step is recorded per user, so no code works twice (RFC 6238 §5.2)."""
from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import struct
import time
from urllib.parse import quote, urlencode

STEP_S = 30
DIGITS = 6
DRIFT_STEPS = 1
SECRET_BYTES = 20  # 160 bits, RFC 4226 §4's recommendation


def new_secret() -> str:
    """Base32 without padding, as authenticator apps expect."""
    return base64.b32encode(secrets.token_bytes(SECRET_BYTES)).decode().rstrip("=")


def _key(secret: str) -> bytes:
    return base64.b32decode(secret + "=" * (-len(secret) % 8), casefold=True)


def hotp(secret: str, counter: int) -> str:
    digest = hmac.new(_key(secret), struct.pack(">Q", counter), hashlib.sha1).digest()
    offset = digest[-1] & 0x0F
    value = struct.unpack(">I", digest[offset:offset + 4])[0] & 0x7FFFFFFF
    return str(value % 10 ** DIGITS).zfill(DIGITS)


def step_at(t: float | None = None) -> int:
    return int((time.time() if t is None else t) // STEP_S)


def totp(secret: str, t: float | None = None) -> str:
    return hotp(secret, step_at(t))


def matching_step(secret: str, code: str, t: float | None = None) -> int | None:
    """The step whose code `code` is, within the drift window; None if none matches."""
    code = (code or "").strip().replace(" ", "")
    if len(code) != DIGITS or not code.isascii() or not code.isdigit():
        return None
    now = step_at(t)
    found = None
    for step in range(now - DRIFT_STEPS, now + DRIFT_STEPS + 1):  # every candidate compared, in constant time
        if hmac.compare_digest(hotp(secret, step), code):
            found = step
    return found


def provisioning_uri(secret: str, account: str, issuer: str) -> str:
    """`otpauth://totp/<issuer>:<account>?secret=…&issuer=…` (Key Uri Format), for a QR code."""
    label = quote(f"{issuer}:{account}", safe="")
    query = urlencode({"secret": secret, "issuer": issuer, "algorithm": "SHA1", "digits": DIGITS,
                       "period": STEP_S}, quote_via=quote)
    return f"otpauth://totp/{label}?{query}"
