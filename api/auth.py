"""API tokens: created once, shown once, stored as a SHA-256 hash, presented as a Bearer token.

A presented token is checked in two steps. The store finds candidates by the first
TOKEN_LOOKUP_CHARS hex characters of its SHA-256, an indexed lookup whose timing can only
tell a caller about the hash of their own guess; then the whole hash is compared with every
candidate by ``hmac.compare_digest``, in constant time, without stopping at a match.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import timedelta

from starlette.requests import Request

from fleetwave.api.envelope import ApiError, Code
from fleetwave.api.session import session_token
from fleetwave.store.base import Store
from fleetwave.store.models import TOKEN_LOOKUP_CHARS, Role, StoredToken, TokenInfo

TOKEN_BYTES = 32
TOKEN_PREFIX = "fw_"
"""Marks a string as a fleetwave token (for secret scanners), and keeps it from starting with
"-", which a command line would take for an option."""
TOKEN_NAME_MAX = 64
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="fleetwave"'}
_EXPIRY = re.compile(r"(\d{1,6})([mhdw])")
_EXPIRY_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
MAX_EXPIRY = timedelta(days=3650)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_token_name(name: str) -> str:
    """A token's name as given to ``fleetwave token create``; ValueError says what is wrong."""
    cleaned = name.strip()
    if not cleaned:
        raise ValueError("a token name must not be empty")
    if len(cleaned) > TOKEN_NAME_MAX:
        raise ValueError(f"a token name must be at most {TOKEN_NAME_MAX} characters")
    if not cleaned.isprintable():
        raise ValueError("a token name must be printable text")
    if cleaned.isdigit():
        raise ValueError("a token name must not be all digits (those are token ids)")
    return cleaned


def parse_expiry(text: str) -> timedelta:
    """``30d`` -> 30 days (``m`` minutes, ``h`` hours, ``d`` days, ``w`` weeks); ValueError
    says what is wrong."""
    match = _EXPIRY.fullmatch(text.strip().lower())
    if match is None:
        raise ValueError(f"expected a duration such as 90m, 12h, 30d or 8w, got {text!r}")
    count, unit = int(match.group(1)), match.group(2)
    expiry = timedelta(**{_EXPIRY_UNITS[unit]: count})
    if count == 0 or expiry > MAX_EXPIRY:
        raise ValueError(f"expected a duration from 1m to {MAX_EXPIRY.days}d, got {text!r}")
    return expiry


async def create_token(
    store: Store, name: str, *, role: Role = Role.ADMIN, expires_in: timedelta | None = None
) -> str:
    """Make a new token named ``name`` with ``role``, store its hash, and return the token
    itself.

    The token is returned exactly once; only its hash is kept. Raises AlreadyExists when the
    name is taken.
    """
    token = TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)
    await store.create_token(
        check_token_name(name), hash_token(token), role=role, expires_in=expires_in
    )
    return token


def presented_token(request: Request) -> str:
    """The Bearer token of a request, else its dashboard session's (api/session.py);
    ApiError 401/1001 when there is none."""
    header = request.headers.get("authorization")
    if header is None or not header.strip():
        from_session = session_token(request)
        if from_session is not None:
            return from_session
        raise ApiError(
            401,
            Code.UNAUTHORIZED,
            "missing token: send Authorization: Bearer <token>",
            headers=_CHALLENGE,
        )
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(
            401,
            Code.UNAUTHORIZED,
            "the Authorization header must be: Bearer <token>",
            headers=_CHALLENGE,
        )
    return token.strip()


async def authenticate(store: Store, request: Request) -> TokenInfo:
    """The token the request carries; ApiError 401 (1001 missing, 1002 wrong or expired)."""
    return await check_token(store, presented_token(request))


async def check_token(store: Store, token: str) -> TokenInfo:
    """The stored token ``token`` is; ApiError 401/1002 when it is wrong or expired."""
    digest = hash_token(token)
    candidates = await store.tokens_by_hash_prefix(digest[:TOKEN_LOOKUP_CHARS])
    found = matching_token(candidates, digest)
    if found is None:
        raise ApiError(401, Code.INVALID_TOKEN, "invalid token", headers=_CHALLENGE)
    if found.expired:
        expired_at = found.info.expires_at
        when = "" if expired_at is None else f" at {expired_at.isoformat(timespec='seconds')}"
        raise ApiError(
            401,
            Code.INVALID_TOKEN,
            f"token expired{when}: ask an admin for a new one",
            headers=_CHALLENGE,
        )
    return found.info


def matching_token(candidates: list[StoredToken], digest: str) -> StoredToken | None:
    """The candidate whose hash is ``digest``, compared in constant time."""
    found = None
    for candidate in candidates:
        if hmac.compare_digest(candidate.token_hash.encode(), digest.encode()):
            found = candidate
    return found
