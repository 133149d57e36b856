"""Who may see what: signed tokens carrying a role, the rooms allowed, and expiry.

Tokens are JWTs (HS256 with a shared secret by default; RS256/ES256/EdDSA with
a public key where the issuer should not share a secret with every gateway).
Claims:

- ``role``: ``viewer`` or ``host``.  A host token may also open the viewer audience.
- ``rooms``: room names, exact (``live-1``) or prefixes ending in ``*`` (``live-*``);
  ``*`` alone means every room.
- ``exp``: expiry (seconds since epoch); ``sub`` optional, for logs.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import jwt
from jwt.algorithms import get_default_algorithms

from gateway.protocol import AUDIENCES, Audience

#: Tokens a verifier will not even parse: well over any honest token's size.
MAX_TOKEN_BYTES = 4096
HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
#: RS*, PS*, ES*, EdDSA: whatever this PyJWT verifies with a public key.
PUBLIC_KEY_ALGORITHMS = frozenset(get_default_algorithms()) - HMAC_ALGORITHMS - {"none"}


def check_algorithms(algorithms: Sequence[str], *, secret: bool, public_key: bool) -> None:
    """Refuse, at startup, an algorithm list that the configured key cannot honour.

    An HMAC algorithm beside a public key is the classic algorithm confusion:
    the public key, which anyone may hold, would be taken as an HMAC secret.
    PyJWT refuses that per token, so such a list cannot admit anyone with an
    HMAC token and only hides the mistake until the first host connects.
    """
    if not algorithms:
        raise ValueError("jwt_algorithms is empty: list at least one, e.g. HS256")
    unknown = [a for a in algorithms if a not in HMAC_ALGORITHMS | PUBLIC_KEY_ALGORITHMS]
    if unknown:
        raise ValueError(f"jwt_algorithms: unsupported {', '.join(unknown)} "
                         f"(HMAC: HS256/384/512; public key: RS*, PS*, ES*, EdDSA)")
    hmac = [a for a in algorithms if a in HMAC_ALGORITHMS]
    if public_key and hmac:
        raise ValueError(f"jwt_algorithms lists {', '.join(hmac)} beside jwt_public_key_file: "
                         "an HMAC algorithm must not be verified with a public key")
    if secret and not hmac:
        raise ValueError("jwt_secret needs an HMAC algorithm (HS256, HS384 or HS512) in jwt_algorithms")


class AuthError(Exception):
    """A refusal: ``status`` is the HTTP status at handshake, ``reason`` a stable label."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class Grant:
    role: Audience
    rooms: tuple[str, ...]
    expires_at: float | None
    subject: str | None = None

    def allows(self, room: str) -> bool:
        for pattern in self.rooms:
            if pattern.endswith("*"):
                if room.startswith(pattern[:-1]):
                    return True
            elif pattern == room:
                return True
        return False

    def admits(self, room: str, audience: Audience) -> bool:
        return self.allows(room) and (audience == "viewer" or self.role == "host")


class Authenticator:
    def __init__(
        self,
        *,
        secret: str | None = None,
        public_key: str | None = None,
        algorithms: Sequence[str] = ("HS256",),
        issuer: str | None = None,
        audience: str | None = None,
        leeway: float = 5.0,
    ) -> None:
        self.secret = secret
        self.key = public_key or secret
        self.algorithms = list(algorithms)
        if self.key is not None:
            check_algorithms(self.algorithms, secret=public_key is None, public_key=public_key is not None)
        self.issuer = issuer
        self.audience = audience
        self.leeway = leeway

    @property
    def enabled(self) -> bool:
        return self.key is not None

    def verify(self, token: str) -> Grant:
        if not self.enabled:
            raise AuthError(403, "auth_unconfigured", "this gateway has no token key configured")
        if len(token) > MAX_TOKEN_BYTES:
            raise AuthError(401, "invalid_token", "token too large")
        try:
            claims = jwt.decode(
                token, self.key, algorithms=self.algorithms, issuer=self.issuer,
                audience=self.audience, leeway=self.leeway,
                options={"require": ["exp", "role", "rooms"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError(401, "expired_token", "token expired") from None
        except jwt.PyJWTError as exc:  # InvalidKeyError too: a key that cannot verify this token
            raise AuthError(401, "invalid_token", f"invalid token: {type(exc).__name__}") from None
        role, rooms = claims.get("role"), claims.get("rooms")
        if role not in AUDIENCES:
            raise AuthError(401, "invalid_token", "invalid token: role must be viewer or host")
        if not isinstance(rooms, list) or not all(isinstance(r, str) and r for r in rooms):
            raise AuthError(401, "invalid_token", "invalid token: rooms must be a list of names")
        sub = claims.get("sub")
        return Grant(role, tuple(rooms), float(claims["exp"]), sub if isinstance(sub, str) else None)

    def mint(self, role: Audience, rooms: Sequence[str], ttl: float, subject: str | None = None,
             now: float | None = None) -> str:
        """Sign a token with the shared secret (operators, tests, the demo).

        The algorithm is the first HMAC one accepted, HS256 if none is: a
        secret cannot sign for a public-key algorithm.
        """
        if self.secret is None:
            raise ValueError("minting needs the shared secret (STOCKWIRE_JWT_SECRET)")
        algorithm = next((a for a in self.algorithms if a in HMAC_ALGORITHMS), "HS256")
        issued = int(time.time() if now is None else now)
        claims: dict[str, object] = {"role": role, "rooms": list(rooms), "iat": issued,
                                     "exp": issued + int(ttl)}
        if subject:
            claims["sub"] = subject
        if self.issuer:
            claims["iss"] = self.issuer
        if self.audience:
            claims["aud"] = self.audience
        return jwt.encode(claims, self.secret, algorithm=algorithm)


def authorize(auth: Authenticator, token: str | None, room: str, audience: Audience,
              require_viewer_token: bool) -> Grant | None:
    """The grant for this connection, None for an anonymous viewer, or AuthError."""
    if token is None:
        if audience == "host":
            raise AuthError(401, "missing_token", "host connections need a token")
        if require_viewer_token:
            raise AuthError(401, "missing_token", "this gateway needs a token")
        return None
    grant = auth.verify(token)
    if not grant.allows(room):
        raise AuthError(403, "wrong_room", "token does not open this room")
    if not grant.admits(room, audience):
        raise AuthError(403, "wrong_role", "token does not open the host audience")
    return grant
