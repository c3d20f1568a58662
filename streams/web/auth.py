"""Who may read the web server: the bearer token (``WEB_AUTH_TOKEN``) and signed peer requests.

- **Clients** send ``Authorization: Bearer <token>``. Every route but ``/health`` and
  ``/ready`` requires it when a token is configured: probes and load balancers carry no
  credentials, and those two routes say nothing about positions.
- **Peers** (another worker forwarding a key's request or asking for its part of the list)
  never receive the token: the group metadata that names a peer's URL is not a credential
  check, and whoever joins the consumer group could advertise any URL. A peer request is
  signed instead: HMAC-SHA256, keyed by the token, over the method, the receiving host, the
  path with its query and the time. The receiver recomputes it with its own token, checks
  that it names itself and is at most ``PEER_SIGNATURE_MAX_AGE_S`` old: a captured
  signature opens nothing else and soon nothing at all.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

__all__ = [
    "OPEN_PATHS",
    "PEER_SIGNATURE_HEADER",
    "PEER_SIGNATURE_MAX_AGE_S",
    "PEER_TIME_HEADER",
    "bearer_token_matches",
    "peer_signature_headers",
    "peer_signature_valid",
]

#: Routes open without a token: liveness and readiness (no position data).
OPEN_PATHS = frozenset({"/health", "/ready"})
PEER_SIGNATURE_HEADER = "X-Positions-Peer-Signature"
PEER_TIME_HEADER = "X-Positions-Peer-Time"
PEER_SIGNATURE_MAX_AGE_S = 30


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


def _signature(token: str, method: str, host: str, path_qs: str, timestamp: int) -> str:
    message = f"{method.upper()}\n{host.lower()}\n{path_qs}\n{timestamp}".encode("utf-8")
    key = hashlib.sha256(b"position-pipeline peer request\n" + token.encode("utf-8")).digest()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def peer_signature_headers(token: str, method: str, host: str, path_qs: str, now_s: float) -> dict[str, str]:
    """The headers that let the worker at ``host`` (``name:port``) accept this request from a peer."""
    timestamp = int(now_s)
    return {PEER_TIME_HEADER: str(timestamp),
            PEER_SIGNATURE_HEADER: _signature(token, method, host, path_qs, timestamp)}


def peer_signature_valid(token: str, method: str, host: str, path_qs: str, headers: Mapping[str, str],
                         now_s: float) -> bool:
    """True when ``headers`` sign exactly this request to this host, within the allowed age."""
    signature, stamp = headers.get(PEER_SIGNATURE_HEADER), headers.get(PEER_TIME_HEADER)
    if not signature or not stamp:
        return False
    try:
        timestamp = int(stamp)
    except ValueError:
        return False
    if abs(now_s - timestamp) > PEER_SIGNATURE_MAX_AGE_S:
        return False
    expected = _signature(token, method, host, path_qs, timestamp)
    return hmac.compare_digest(expected.encode("ascii"), signature.encode("ascii", errors="replace"))
