"""Tokens: what they open, when they stop, and how they are refused."""

from __future__ import annotations

import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.auth import Authenticator, AuthError, Grant, authorize

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
