"""Sign-in tables (refresh tokens, failed sign-ins, second factors, signing key retirement) and the shapes
of the sign-in REST bodies. Declared on the account service's own `Base`, so they share
its metadata and its migrations (revision 0002_signin)."""
from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field as PField
from sqlmodel import Field

from govmedia_kit.db import new_id, utcnow

from .models import Base, Strict


class RefreshToken(Base, table=True):
    """One refresh token of a sign-in session. Only the SHA-256 of the token is stored: a copy
    of the database does not let anyone sign in. Tokens of one session share `family_id`, so a
    reused (stolen) token can end the whole session."""

    __tablename__ = "refresh_tokens"
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    token_hash: str = Field(max_length=64, unique=True)
    family_id: str = Field(max_length=32, index=True)
    user_id: str = Field(foreign_key="users.id", index=True, max_length=32)
    issued_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime = Field(index=True)
    revoked_at: datetime | None = None
    # rotated | reuse_detected | revoked | user_inactive
    revoked_reason: str | None = Field(default=None, max_length=20)


class SigninFailure(Base, table=True):
    """Consecutive failed sign-ins of one username (`user:<name>`) or one client address
    (`addr:<ip>`). In the database, so a lock survives restarts and holds across replicas;
    kept for any username tried, existing or not, so answers never tell which exist."""

    __tablename__ = "signin_failures"
    subject: str = Field(primary_key=True, max_length=120)
    failures: int = 0
    last_failed_at: datetime | None = Field(default=None, index=True)
    locked_until: datetime | None = None


class UserTotp(Base, table=True):
    """A user's second factor (TOTP, services/account/totp.py). The secret is sealed with the
    key encryption key (tokens.KeySealer, bound to the user id), so a copy of the database or a
    backup does not give anyone the codes. `confirmed_at` is set by the first correct code;
    until then the secret is pending and sign-in does not ask for codes. `last_step`: the
    30-second step of the last code accepted, so no code works twice. `ticket_hash`: the
    SHA-256 of an enrolment ticket, given at sign-in to a user who must enrol (ops and
    regulator in production) and good only for enrolling, until `ticket_expires_at`."""

    __tablename__ = "user_totp"
    user_id: str = Field(primary_key=True, foreign_key="users.id", max_length=32)
    secret_sealed: str | None = Field(default=None, max_length=400)
    confirmed_at: datetime | None = None
    last_step: int | None = None
    pending_failures: int = 0  # wrong codes against a pending secret; five discard it
    ticket_hash: str | None = Field(default=None, max_length=64, unique=True)
    ticket_expires_at: datetime | None = None
    updated_at: datetime = Field(default_factory=utcnow)


class SigningKeyRetirement(Base, table=True):
    """When a signing key stopped signing and when it leaves the JWKS. A key stays published
    for a grace period longer than the access token lifetime, so tokens it signed still verify."""

    __tablename__ = "signing_key_retirements"
    kid: str = Field(primary_key=True, foreign_key="signing_keys.kid", max_length=64)
    superseded_at: datetime
    retire_at: datetime
    rotated_by: str = Field(max_length=64)  # the principal (user id) who rotated


# --- request and response bodies ---------------------------------------------

class TokenIssued(BaseModel):
    """The token endpoint's answer (RFC 6749 §5.1); no refresh token for client credentials."""

    access_token: str
    token_type: str = "bearer"
    expires_in: int
    refresh_token: str | None = None
    refresh_expires_in: int | None = None


class KeyRotate(Strict):
    # Seconds the superseded key stays published. Default: the service setting (2 h). Shorter
    # than the access token lifetime (1 h) ends tokens it signed early: only for a leaked key.
    grace_s: int | None = PField(default=None, ge=0, le=7 * 24 * 3600)


class KeyPublic(BaseModel):
    kid: str
    active: bool
    published: bool
    created_at: datetime
    retire_at: datetime | None = None


class KeyRotated(BaseModel):
    kid: str
    keys: list[KeyPublic]


class ClientSecretIssued(BaseModel):
    """A stream account's new client secret: shown once, stored only as an Argon2 hash."""

    client_id: str
    client_secret: str
    rotated_at: datetime


class TotpEnrolIn(Strict):
    """`POST /v1/auth/totp/enrol`: with a bearer token, or with the enrolment ticket sign-in gave."""

    enrolment_ticket: str | None = PField(default=None, min_length=1, max_length=200)


class TotpConfirmIn(Strict):
    code: str = PField(min_length=6, max_length=6, pattern=r"^[0-9]{6}$")
    enrolment_ticket: str | None = PField(default=None, min_length=1, max_length=200)


class TotpDisableIn(Strict):
    code: str = PField(min_length=6, max_length=6, pattern=r"^[0-9]{6}$")


class TotpEnrolment(BaseModel):
    """Shown once: the secret, and the same as an `otpauth://` URI for a QR code."""

    secret: str
    otpauth_uri: str
    digits: int = 6
    period: int = 30
    algorithm: str = "SHA1"


class TotpStatus(BaseModel):
    user_id: str
    enrolled: bool
    confirmed_at: datetime | None = None
