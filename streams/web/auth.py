"""The optional bearer token that guards every route of the web server (``WEB_AUTH_TOKEN``)."""

from __future__ import annotations

import hmac

__all__ = ["bearer_token_matches"]


def bearer_token_matches(authorization: str | None, token: str | None) -> bool:
    """True when no token is configured, or ``authorization`` is ``Bearer <token>``.

    The scheme is case-insensitive (RFC 7235); the token is compared in constant time
    (``hmac.compare_digest`` on bytes), so the time of a refusal says nothing about how
    much of a guess was right.
    """
    if not token:
        return True
    if not authorization:
        return False
    scheme, _, credentials = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(credentials.strip().encode("utf-8"), token.encode("utf-8"))
