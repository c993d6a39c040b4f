"""What the public (no sign-in) endpoints share: citizens' phone numbers checked and masked,
tracking codes a citizen can read over the phone, and the gate in front of an intake
(the caller's address for the rate limit, and no guessable anonymous Idempotency-Key).

Used by the petition intake (留言) and the content service's news clues (报料)."""
from __future__ import annotations

import re
import secrets

from fastapi import Request

from .client_address import grpc_client, http_client, trusted_proxies
from .errors import AppError, invalid
from .limits import RateLimiter

# --- phones ------------------------------------------------------------------------------

_MOBILE = re.compile(r"1[3-9]\d{9}")
# Area code 010 / 02x (then 8 digits) or 0xxx (then 7–8 digits); local numbers never start with 0 or 1.
_LANDLINE = re.compile(r"0(?:10|2\d)[2-9]\d{7}|0[3-9]\d{2}[2-9]\d{6,7}")
_SEPARATORS = re.compile(r"[\s\-()（）]")


def normalize_phone(raw: str) -> str:
    """A mainland mobile (13812341234) or landline (020-12345678), or `invalid_phone`."""
    digits = _SEPARATORS.sub("", raw)
    for prefix in ("+86", "0086"):
        if digits.startswith(prefix):
            digits = digits[len(prefix):]
            if not digits.startswith("1"):
                digits = "0" + digits  # +86 20 … is the landline 020 …
            break
    if _MOBILE.fullmatch(digits):
        return digits
    if _LANDLINE.fullmatch(digits):
        area = 3 if digits[1] in "12" else 4
        return f"{digits[:area]}-{digits[area:]}"
    # The number itself is personal data: it is not echoed back.
    raise invalid("invalid_phone", "联系电话须为中国大陆手机号码或固定电话号码", {"field": "contact.phone"})


def mask_phone(phone: str | None) -> str | None:
    """138****1234 for a mobile, 020-****5678 for a landline."""
    if not phone:
        return phone
    if "-" in phone:
        area, number = phone.split("-", 1)
        return f"{area}-{'*' * (len(number) - 4)}{number[-4:]}"
    return f"{phone[:3]}****{phone[-4:]}"


def mask_name(name: str | None) -> str | None:
    """张** : the family name only, so staff can tell cases apart without knowing who."""
    if not name:
        return name
    return name[0] + "*" * max(len(name) - 1, 1)


# --- tracking codes ----------------------------------------------------------------------

# Crockford base32: no I, L, O, U, so a code read over the phone is not misheard.
_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_READ_AS = str.maketrans({"I": "1", "L": "1", "O": "0"})
TRACKING_CODE_LENGTH = 12  # 60 random bits


def new_tracking_code() -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(TRACKING_CODE_LENGTH))


def normalize_tracking_code(raw: str) -> str | None:
    """Upper-case, hyphens and spaces dropped, look-alikes folded; None if it cannot be a code."""
    code = re.sub(r"[\s-]", "", raw).upper().translate(_READ_AS)
    if len(code) != TRACKING_CODE_LENGTH or any(c not in _ALPHABET for c in code):
        return None
    return code


# --- the gate of a public endpoint -------------------------------------------------------

# Anonymous writes have no caller to scope an Idempotency-Key to (the kit binds them to the
# address and the body): a short, guessable key is refused all the same.
MIN_ANONYMOUS_KEY = 16


def caller_address(request: Request) -> str:
    """The client's address, through the service's trusted proxies (`<SERVICE>_TRUSTED_PROXIES`,
    govmedia_kit/client_address.py)."""
    return http_client(request, trusted_proxies(request.app.state.runtime))


def grpc_caller_address(rt, context) -> str:
    """The same for a gRPC call: the peer, or `x-forwarded-for` metadata from a trusted proxy."""
    return grpc_client(context, trusted_proxies(rt))


def admit_public(request: Request, limiter: RateLimiter, *, write: bool) -> None:
    """Runs before the body is read, so malformed submissions count against the limit too."""
    key = request.headers.get("idempotency-key")
    if write and key is not None and not request.headers.get("authorization") and len(key) < MIN_ANONYMOUS_KEY:
        raise AppError(400, "idempotency_key_too_short",
                       f"匿名提交的 Idempotency-Key 至少 {MIN_ANONYMOUS_KEY} 个字符（建议使用 UUID）")
    limiter.admit(caller_address(request))


def admit_grpc(rt, context, limiter: RateLimiter) -> None:
    """The gate of a public gRPC endpoint: the same limit, by the same client address, as REST."""
    limiter.admit(grpc_caller_address(rt, context))
