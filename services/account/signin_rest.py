"""REST transport of sign-in: the token and revocation endpoints, signing key rotation,
client secrets of stream accounts."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Form, Request, Response
from fastapi.responses import JSONResponse

from govmedia_kit.auth import CurrentPrincipal
from govmedia_kit.runtime import RuntimeDep

from . import signin
from .signin_models import ClientSecretIssued, KeyPublic, KeyRotate, KeyRotated, TokenIssued

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
):
    """OAuth2 token endpoint: `password` and `refresh_token` for people, `client_credentials`
    for matrix clients. Repeated failures answer 429 with `Retry-After`."""
    address = request.client.host if request.client else ""
    try:
        issued = await signin.issue_token(rt, grant_type, username, password, client_id, client_secret,
                                          refresh_token, address)
    except signin.ThrottledError as exc:
        return _throttled(exc)
    response.headers.update(NO_STORE)
    return issued


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
