"""REST transport of sign-in: the token and revocation endpoints, the second factor (TOTP),
signing key rotation, client secrets of stream and nats accounts, NATS credentials of clients."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Form, Request, Response
from fastapi.responses import JSONResponse

from govmedia_kit.auth import AnyPrincipal, CurrentPrincipal, OptionalPrincipal
from govmedia_kit.client_address import http_client, trusted_proxies
from govmedia_kit.runtime import RuntimeDep

from . import nats_clients, signin
from .models import NatsCredentials, NatsCredentialsIn
from .signin_models import (
    ClientSecretIssued, KeyPublic, KeyRotate, KeyRotated, TokenIssued, TotpConfirmIn, TotpDisableIn, TotpEnrolIn,
    TotpEnrolment, TotpStatus,
)

router = APIRouter()

# RFC 6749 §5.1: answers carrying credentials are never cached.
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def _throttled(exc: signin.ThrottledError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers={"Retry-After": str(exc.retry_after)})


@router.post("/v1/auth/token", response_model=TokenIssued, response_model_exclude_none=True, tags=["auth"])
async def token(
    rt: RuntimeDep,
    request: Request,
    response: Response,
    grant_type: Annotated[str, Form(max_length=40)] = "password",
    username: Annotated[str, Form(max_length=signin.MAX_USERNAME)] = "",
    password: Annotated[str, Form(max_length=signin.MAX_PASSWORD)] = "",
    client_id: Annotated[str, Form(max_length=64)] = "",
    client_secret: Annotated[str, Form(max_length=signin.MAX_OPAQUE)] = "",
    refresh_token: Annotated[str, Form(max_length=signin.MAX_OPAQUE)] = "",
    otp: Annotated[str, Form(max_length=16)] = "",
):
    """OAuth2 token endpoint: `password` (plus `otp`, the 6-digit code, for a user with a second
    factor) and `refresh_token` for people, `client_credentials` for matrix clients. Repeated
    failures, or a full password-check pool, answer 429 with `Retry-After`."""
    address = http_client(request, trusted_proxies(rt))
    try:
        issued = await signin.issue_token(rt, grant_type, username, password, client_id, client_secret,
                                          refresh_token, address, otp)
    except signin.ThrottledError as exc:
        return _throttled(exc)
    response.headers.update(NO_STORE)
    return issued


@router.post("/v1/auth/totp/enrol", response_model=TotpEnrolment, tags=["auth"])
async def enrol_totp(rt: RuntimeDep, who: OptionalPrincipal, response: Response,
                     body: Annotated[TotpEnrolIn | None, Body()] = None):
    """A new TOTP secret for the caller (a bearer token, or the `enrolment_ticket` sign-in gave
    to a user who must enrol), shown once as `otpauth://`; pending until confirmed."""
    issued = await signin.enrol_totp(rt, who, body.enrolment_ticket if body else None)
    response.headers.update(NO_STORE)
    return issued


@router.post("/v1/auth/totp/confirm", response_model=TotpStatus, tags=["auth"])
async def confirm_totp(rt: RuntimeDep, who: OptionalPrincipal, body: TotpConfirmIn):
    """The first code from the authenticator turns the second factor on."""
    return await signin.confirm_totp(rt, who, body.code, body.enrolment_ticket)


@router.post("/v1/auth/totp/disable", response_model=TotpStatus, tags=["auth"])
async def disable_totp(rt: RuntimeDep, who: CurrentPrincipal, body: TotpDisableIn):
    """The caller turns their second factor off with a current code (not for ops and regulator
    in production)."""
    return await signin.disable_totp(rt, who, body.code)


@router.delete("/v1/users/{user_id}/totp", response_model=TotpStatus, tags=["users"])
async def reset_totp(rt: RuntimeDep, who: CurrentPrincipal, user_id: str):
    """Ops remove a user's second factor (a lost phone); the user enrols again (audited)."""
    return await signin.reset_totp(rt, who, user_id)


@router.post("/v1/auth/revoke", tags=["auth"])
async def revoke(
    rt: RuntimeDep,
    token: Annotated[str, Form(max_length=4096)] = "",
    token_type_hint: Annotated[str, Form(max_length=40)] = "",
):
    """RFC 7009: revoke a refresh token (and its session). Unknown tokens answer 200 too."""
    await signin.revoke_token(rt, token, token_type_hint)
    return {}


@router.get("/v1/auth/keys", response_model=list[KeyPublic], tags=["auth"])
async def list_keys(rt: RuntimeDep, who: CurrentPrincipal):
    """The signing keys and their state (ops)."""
    return await signin.list_keys(rt, who)


@router.post("/v1/auth/keys/rotate", response_model=KeyRotated, tags=["auth"])
async def rotate_keys(rt: RuntimeDep, who: CurrentPrincipal, body: Annotated[KeyRotate | None, Body()] = None):
    """A new signing key, in use at once; the previous one stays in the JWKS for its grace (ops)."""
    return await signin.rotate_keys(rt, who, body.grace_s if body else None)


@router.post("/v1/accounts/{account_id}/client-secret", response_model=ClientSecretIssued, tags=["ledger"])
async def rotate_client_secret(rt: RuntimeDep, who: CurrentPrincipal, account_id: str, response: Response):
    """A new client secret for a stream account, shown once (ops or regulator)."""
    issued = await signin.rotate_client_secret(rt, who, account_id)
    response.headers.update(NO_STORE)
    return issued


@router.delete("/v1/accounts/{account_id}/client-secret", status_code=204, tags=["ledger"])
async def revoke_client_secret(rt: RuntimeDep, who: CurrentPrincipal, account_id: str):
    """The stream account's client can no longer get tokens (ops or regulator)."""
    await signin.revoke_client_secret(rt, who, account_id)
    return Response(status_code=204)


@router.post("/v1/clients/nats-credentials", status_code=201, tags=["clients"],
             responses={201: {"model": NatsCredentials}})
async def nats_credentials(rt: RuntimeDep, who: AnyPrincipal, request: Request,
                           body: Annotated[NatsCredentialsIn | None, Body()] = None):
    """A matrix client of a nats account (its client-credentials token) gets a NATS user allowed
    its own subjects only: `creds` (shown once) when the service makes the key, or a JWT for
    the client's own `public_key`."""
    issued = await nats_clients.issue_credentials(rt, who, body or NatsCredentialsIn(),
                                                  nats_clients.token_issued_at(request.headers.get("authorization")))
    return JSONResponse(issued.body(), status_code=201, headers=NO_STORE)
