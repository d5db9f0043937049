"""Header-based auth: a request gets through only with a bearer token signed with a shared key.

Tokens are ``<user>.<expiry unix seconds>.<hex HMAC-SHA256 of "user.expiry">``, signed with the
key in ``$EXTKIT_AUTH_KEY`` (read once per server process, at startup). Anything else is
answered 401 with a ``www-authenticate`` challenge (RFC 6750) and never reaches the upstream;
a valid token's user goes upstream as ``x-auth-user`` and the token itself does not.

    EXTKIT_AUTH_KEY=change-me extctl serve header_auth:HeaderAuth --uds /run/x/extproc.sock
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time

import extproc

KEY_VARIABLE = "EXTKIT_AUTH_KEY"


def sign(key: bytes, user: str, expires: int) -> str:
    """A token for ``user`` valid until ``expires`` (unix seconds)."""
    payload = f"{user}.{expires}"
    return f"{payload}.{hmac.new(key, payload.encode(), hashlib.sha256).hexdigest()}"


class HeaderAuth(extproc.Processor):
    key: bytes = b""
    message_timeout = 0.2

    @classmethod
    async def on_startup(cls) -> None:
        key = os.environ.get(KEY_VARIABLE, "")
        if len(key) < 16:
            raise RuntimeError(f"${KEY_VARIABLE} must hold a key of at least 16 characters")
        cls.key = key.encode()

    async def on_request_headers(
        self, headers: extproc.Headers
    ) -> extproc.ImmediateResponse | None:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return self._challenge("missing bearer token", error=None)
        user = self._verify(token.strip())
        if user is None:
            return self._challenge("invalid or expired token", error="invalid_token")
        headers["x-auth-user"] = user
        del headers["authorization"]  # the upstream gets the user, not the credential
        return None

    def _verify(self, token: str) -> str | None:
        user, _, rest = token.partition(".")
        expires, _, signature = rest.partition(".")
        if not user or not expires.isdigit() or not signature:
            return None
        expected = sign(type(self).key, user, int(expires)).rpartition(".")[2]
        if not hmac.compare_digest(expected, signature) or int(expires) < time.time():
            return None
        return user

    @staticmethod
    def _challenge(reason: str, error: str | None) -> extproc.ImmediateResponse:
        challenge = 'Bearer realm="extkit"' + (f', error="{error}"' if error else "")
        return extproc.ImmediateResponse(401, body=f"unauthorized: {reason}\n".encode(),
                                         headers={"www-authenticate": challenge})
