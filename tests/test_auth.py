"""Tokens: what they open, when they stop, and how they are refused."""

from __future__ import annotations

import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import ValidationError

from gateway.auth import Authenticator, AuthError, Grant, authorize
from gateway.settings import Settings

SECRET = "s" * 40
auth = Authenticator(secret=SECRET)


def refused(fn: object, *args: object) -> AuthError:
    with pytest.raises(AuthError) as info:
        fn(*args)  # type: ignore[operator]
    return info.value


def test_grant_matches_exact_rooms_and_prefixes() -> None:
    g = Grant("viewer", ("live-1", "shop-*"), None)
    assert g.allows("live-1")
    assert not g.allows("live-10")
    assert g.allows("shop-7")
    assert g.allows("shop-")
    assert not g.allows("shoe-1")
    assert Grant("host", ("*",), None).allows("anything")


def test_minted_tokens_verify_and_carry_their_claims() -> None:
    grant = auth.verify(auth.mint("host", ["live-*"], ttl=60, subject="anchor-7"))
    assert (grant.role, grant.rooms, grant.subject) == ("host", ("live-*",), "anchor-7")
    assert grant.expires_at is not None
    assert time.time() + 50 < grant.expires_at <= time.time() + 61


def test_expired_forged_and_malformed_tokens_are_refused() -> None:
    expired = auth.mint("viewer", ["r"], ttl=60, now=time.time() - 3600)
    assert refused(auth.verify, expired).reason == "expired_token"
    forged = Authenticator(secret="x" * 40).mint("host", ["*"], ttl=60)
    assert refused(auth.verify, forged).reason == "invalid_token"
    assert refused(auth.verify, "not.a.token").reason == "invalid_token"
    assert refused(auth.verify, "x" * 5000).reason == "invalid_token"
    no_rooms = jwt.encode({"role": "host", "exp": time.time() + 60}, SECRET, algorithm="HS256")
    assert refused(auth.verify, no_rooms).status == 401
    bad_role = jwt.encode({"role": "admin", "rooms": ["*"], "exp": time.time() + 60}, SECRET,
                          algorithm="HS256")
    assert refused(auth.verify, bad_role).reason == "invalid_token"
    none_alg = jwt.encode({"role": "host", "rooms": ["*"], "exp": time.time() + 60}, None,
                          algorithm="none")
    assert refused(auth.verify, none_alg).reason == "invalid_token"


def test_public_key_tokens() -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    verifier = Authenticator(public_key=pem, algorithms=["ES256"])
    token = jwt.encode({"role": "host", "rooms": ["a"], "exp": time.time() + 60}, private,
                       algorithm="ES256")
    assert verifier.verify(token).role == "host"
    hs = auth.mint("host", ["a"], ttl=60)  # an HS256 token must not pass as ES256
    assert refused(verifier.verify, hs).reason == "invalid_token"


def test_authorize_decides_per_audience() -> None:
    viewer = auth.mint("viewer", ["live-1"], ttl=60)
    host = auth.mint("host", ["live-1"], ttl=60)
    assert authorize(auth, None, "live-1", "viewer", require_viewer_token=False) is None
    assert refused(authorize, auth, None, "live-1", "viewer", True).reason == "missing_token"
    assert refused(authorize, auth, None, "live-1", "host", False).reason == "missing_token"
    assert refused(authorize, auth, viewer, "live-1", "host", False).reason == "wrong_role"
    assert refused(authorize, auth, host, "live-2", "host", False).reason == "wrong_room"
    assert refused(authorize, auth, viewer, "live-2", "viewer", False).status == 403
    assert authorize(auth, host, "live-1", "viewer", False) is not None  # hosts may watch as viewers
    unconfigured = Authenticator()
    assert refused(authorize, unconfigured, host, "live-1", "host", False).reason == "auth_unconfigured"


def public_pem() -> str:
    private = ec.generate_private_key(ec.SECP256R1())
    return private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def test_a_token_the_key_cannot_verify_is_an_invalid_token_not_a_crash() -> None:
    # A secret deployment that also lists RS256: PyJWT raises InvalidKeyError,
    # which is not an InvalidTokenError, when asked to verify RS256 with a secret.
    mixed = Authenticator(secret=SECRET, algorithms=["HS256", "RS256"])
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rs256 = jwt.encode({"role": "host", "rooms": ["*"], "exp": time.time() + 60}, private,
                       algorithm="RS256")
    error = refused(mixed.verify, rs256)
    assert (error.status, error.reason) == (401, "invalid_token")
    assert error.message == "invalid token: InvalidKeyError"
    assert mixed.verify(mixed.mint("host", ["a"], ttl=60)).role == "host"


def test_algorithm_lists_the_key_cannot_honour_are_refused_at_startup(tmp_path: Path) -> None:
    pem = public_pem()
    key_file = tmp_path / "key.pem"
    key_file.write_text(pem)
    with pytest.raises(ValueError, match="HS256 beside jwt_public_key_file"):
        Authenticator(public_key=pem, algorithms=["ES256", "HS256"])
    cases = [
        ({"jwt_public_key_file": str(key_file), "jwt_algorithms": "ES256,HS256"}, "HS256 beside"),
        ({"jwt_public_key_file": str(key_file), "jwt_algorithms": "HS512"}, "HS512 beside"),
        ({"jwt_secret": SECRET, "jwt_algorithms": "RS256"}, "jwt_secret needs an HMAC algorithm"),
        ({"jwt_secret": SECRET, "jwt_algorithms": "HS256,none"}, "unsupported none"),
        ({"jwt_secret": SECRET, "jwt_algorithms": " , "}, "jwt_algorithms is empty"),
    ]
    for options, message in cases:
        with pytest.raises(ValidationError, match=message):
            Settings(**options)  # type: ignore[arg-type]
    assert Settings(jwt_public_key_file=str(key_file), jwt_algorithms="ES256, RS256").algorithms() == [
        "ES256", "RS256"]
    assert Settings(jwt_secret=SECRET, jwt_algorithms="RS256,HS384").algorithms() == ["RS256", "HS384"]
    assert Settings().algorithms() == ["HS256"]  # no key at all: nothing to check against


def test_minting_uses_the_first_hmac_algorithm_accepted() -> None:
    token = Authenticator(secret=SECRET * 2, algorithms=["RS256", "HS384"]).mint("viewer", ["r"], 60)
    assert jwt.get_unverified_header(token)["alg"] == "HS384"
    assert jwt.get_unverified_header(auth.mint("viewer", ["r"], 60))["alg"] == "HS256"
