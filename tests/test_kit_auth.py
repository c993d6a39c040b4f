"""Token verification (pure logic, keys made here): what every service trusts."""
from __future__ import annotations

import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from govmedia_kit.auth import Principal, TokenVerifier
from govmedia_kit.errors import AppError

ISSUER = "govmedia-account"


def keypair(kid: str):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk["kid"] = kid
    return key, {"keys": [jwk]}


def sign(key, kid: str, **claims) -> str:
    base = {"sub": "u1", "name": "editor", "unit": "unit-1", "roles": ["editor"], "iss": ISSUER,
            "exp": int(time.time()) + 60}
    return jwt.encode({**base, **claims}, key, algorithm="RS256", headers={"kid": kid})


async def test_valid_token_gives_the_principal():
    key, jwks = keypair("k1")
    who = await TokenVerifier(None, ISSUER, jwks).verify(sign(key, "k1"))
    assert who == Principal(subject="u1", name="editor", unit_id="unit-1", roles=("editor",))
    assert who.has("editor") and not who.is_ops
    with pytest.raises(AppError) as err:
        who.require("reviewer3")
    assert err.value.code == "role_required" and err.value.status == 403
    with pytest.raises(AppError) as err:
        who.require_unit("unit-2")
    assert err.value.code == "other_unit"


@pytest.mark.parametrize("mutate, message", [
    (lambda key, other: sign(key, "k1", exp=int(time.time()) - 5), "过期"),
    (lambda key, other: sign(key, "k1", iss="someone-else"), "无效"),
    (lambda key, other: sign(other, "k1"), "无效"),  # signed by a key that is not published
    (lambda key, other: sign(other, "k9"), "未知"),
    (lambda key, other: "not-a-token", "格式"),
])
async def test_bad_tokens_are_refused(mutate, message):
    key, jwks = keypair("k1")
    other, _ = keypair("k1")
    with pytest.raises(AppError) as err:
        await TokenVerifier(None, ISSUER, jwks).verify(mutate(key, other))
    assert err.value.status == 401 and err.value.code == "unauthenticated"
    assert message in err.value.message
