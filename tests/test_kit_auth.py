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
            "aud": "govmedia-api", "iat": int(time.time()), "exp": int(time.time()) + 60}
    return jwt.encode({**base, **claims}, key, algorithm="RS256", headers={"kid": kid})


async def test_valid_token_gives_the_principal():
    key, jwks = keypair("k1")
    who = await TokenVerifier(None, ISSUER, jwks).verify(sign(key, "k1"))
    assert who == Principal(subject="u1", name="editor", unit_id="unit-1", roles=("editor",))
    assert who.has("editor") and not who.has("ops")
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


# --- reach: own unit, or a region subtree for ops, regulator and supervisor -------------------

PROVINCE, CITY_A, CITY_B = "/p/", "/p/a/", "/p/b/"


def person(roles, region_path, unit="u-city-a"):
    return Principal(subject="x", name="x", unit_id=unit, roles=tuple(roles), region_path=region_path)


async def test_region_claim_becomes_the_principals_reach():
    key, jwks = keypair("k1")
    who = await TokenVerifier(None, ISSUER, jwks).verify(sign(key, "k1", roles=["regulator"], region=CITY_A))
    assert who.region_path == CITY_A and who.scope("regulator") == CITY_A


@pytest.mark.parametrize("roles, region, target, allowed", [
    (["regulator"], CITY_A, CITY_A + "county/", True),  # below the caller's region
    (["regulator"], CITY_A, CITY_A, True),
    (["regulator"], CITY_A, CITY_B, False),  # a sibling city
    (["regulator"], CITY_A, PROVINCE, False),  # above
    (["regulator"], "/p/a", "/p/ab/", False),  # a prefix of the id is not the subtree
    (["regulator"], PROVINCE, CITY_B, True),
    (["regulator"], PROVINCE, None, True),  # the province reaches a unit not yet in a read model
    (["regulator"], CITY_A, None, False),
    (["editor"], PROVINCE, CITY_A, False),  # unit roles never reach beyond the unit
    (["supervisor"], CITY_A, CITY_A, False),  # a region role not among the endpoint's cross-unit roles
    (["regulator"], "", CITY_A, False),  # a token without a region reaches its unit only
])
def test_require_unit_across_units(roles, region, target, allowed):
    who = person(roles, region)
    try:
        who.require_unit("u-other", target, cross_unit_roles=("regulator", "ops"))
        refused = None
    except AppError as exc:
        refused = exc.code
    assert (refused is None) == allowed, refused
    assert refused in (None, "other_unit")


def test_own_unit_is_always_reached_and_lists_scope_by_role():
    editor = person(["editor"], CITY_A)
    assert editor.require_unit("u-city-a") is editor
    assert editor.scope("ops") is None
    assert person(["ops"], PROVINCE).scope("ops") == ""  # the whole province
    assert person(["ops"], CITY_A).scope("ops") == CITY_A
    assert person(["ops", "editor"], CITY_A).scope("editor") is None  # editor is no cross-unit role


def test_province_only_actions():
    assert person(["ops"], PROVINCE).require_province("ops")
    for who, code in ((person(["ops"], CITY_A), "province_only"), (person(["editor"], PROVINCE), "role_required")):
        with pytest.raises(AppError) as exc:
            who.require_province("ops")
        assert exc.value.code == code
