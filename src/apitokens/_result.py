"""AuthResult: the decision, and the HTTP response a refusal becomes (DESIGN §4)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from ._model import Outcome, Scope, Token
from ._policy import AuthScheme, Policy

__all__ = ["AuthResult", "limit_refusal", "refusal"]

# What a client may be told. Never whether a token id exists: the precise
# reason goes to the audit log only.
_DESCRIPTIONS = {
    "invalid_request": "The request is malformed (its Authorization header or its target).",
    "invalid_token": "The access token is missing, invalid, expired or revoked.",
    "insufficient_scope": "The access token does not allow this request.",
    "request_too_large": "The request body is larger than this token's rules may inspect.",
    "too_many_requests": "Too many failed authentication attempts; try again later.",
    "rate_limit_exceeded": "The access token's rate limit is reached; try again later.",
    "credits_spent": "The access token's usage credits are spent.",
    "temporarily_unavailable": "Authentication is temporarily unavailable.",
}
_STATUS_ERROR = {
    400: "invalid_request",
    401: "invalid_token",
    403: "insufficient_scope",
    413: "request_too_large",
    429: "too_many_requests",
    503: "temporarily_unavailable",
}


@dataclass(frozen=True, slots=True)
class AuthResult:
    """The outcome of authenticating one request.

    Attributes:
        outcome: SUCCESS, FAILED, FORBIDDEN or PASS_THROUGH.
        status_code: 200 for success and pass-through, else the refusal's status.
        user: the user the request acts as (on success): the token's owner, the
            Basic username of an unbound token, or the ``X-Run-As`` user.
        token: the token record used (on success, and on 403/413 refusals).
        reason: the precise reason, as written to the audit log; never send
            it to the client.
        headers: response headers of a refusal (``Content-Type``,
            ``WWW-Authenticate``, ``Retry-After``).
        error: the RFC 6750 error code of a refusal (``invalid_token``, ...).
        scheme: the scheme that carried the token (on success).
        real_user: on a request run as another user (``X-Run-As``), the token's
            owner, who sent it (``user`` is the user acted as); ``None`` otherwise.
    """

    outcome: Outcome
    status_code: int = 200
    user: str | None = None
    token: Token | None = None
    reason: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    error: str | None = None
    scheme: AuthScheme | None = field(default=None, repr=False)
    real_user: str | None = None

    @property
    def authenticated(self) -> bool:
        """True when the request is authenticated by a token."""
        return self.outcome is Outcome.SUCCESS

    @property
    def description(self) -> str:
        """The refusal's description for the client (safe to send)."""
        return _DESCRIPTIONS.get(self.error or "", "")

    @property
    def body(self) -> bytes:
        """The refusal's JSON body: ``{"error": ..., "error_description": ...}``."""
        if self.error is None:
            return b""
        payload = {"error": self.error, "error_description": self.description}
        return json.dumps(payload).encode()

    @property
    def scopes(self) -> list[str]:
        """Starlette-style scopes: ``authenticated``, ``read`` and, if allowed, ``write``."""
        if self.token is None or not self.authenticated:
            return []
        if self.token.scope is Scope.READ_WRITE:
            return ["authenticated", "read", "write"]
        return ["authenticated", "read"]


def _challenges(policy: Policy, error: str | None) -> list[tuple[str, str]]:
    realm = policy.realm
    headers = []
    if policy.auth_schemes.bearer:
        value = f'Bearer realm="{realm}"'
        if error is not None:
            value += f', error="{error}", error_description="{_DESCRIPTIONS[error]}"'
        headers.append(("WWW-Authenticate", value))
    if policy.auth_schemes.basic:
        headers.append(("WWW-Authenticate", f'Basic realm="{realm}", charset="UTF-8"'))
    return headers


def refusal(
    policy: Policy,
    status: int,
    reason: str,
    *,
    token: Token | None = None,
    retry_after: int | None = None,
    challenge_error: bool = True,
) -> AuthResult:
    """Build the refusal for ``status`` (400, 401, 403, 413, 429 or 503).

    Args:
        policy: gives the realm and which challenges to send.
        status: the HTTP status.
        reason: the precise reason, for the audit log.
        token: the token record, when the caller is known (403, 413).
        retry_after: seconds, for 429.
        challenge_error: on 401, name ``invalid_token`` in the Bearer
            challenge; ``False`` when no credentials were sent (RFC 6750 §3.1).
    """
    error = _STATUS_ERROR[status]
    headers: list[tuple[str, str]] = [("Content-Type", "application/json")]
    if status == 401:
        headers += _challenges(policy, error if challenge_error else None)
    elif status in (400, 403) and policy.auth_schemes.bearer:
        headers.append(("WWW-Authenticate", f'Bearer realm="{policy.realm}", error="{error}"'))
    if retry_after is not None:
        headers.append(("Retry-After", str(retry_after)))
    outcome = Outcome.FORBIDDEN if status in (403, 413) else Outcome.FAILED
    return AuthResult(
        outcome=outcome,
        status_code=status,
        token=token,
        reason=reason,
        headers=tuple(headers),
        error=error,
    )


def limit_refusal(
    token: Token,
    reason: str,
    *,
    credits: bool,
    retry_after: int | None,
    headers: tuple[tuple[str, str], ...],
) -> AuthResult:
    """The 429 of a token over its rate limit or out of credits: a known caller, FORBIDDEN.

    Args:
        token: the token.
        reason: for the audit log (which limit).
        credits: the credits are spent (else the rate limit is reached).
        retry_after: seconds until the limit allows a request again, if it will.
        headers: the ``RateLimit-Policy`` and ``RateLimit`` fields.
    """
    error = "credits_spent" if credits else "rate_limit_exceeded"
    sent: list[tuple[str, str]] = [("Content-Type", "application/json"), *headers]
    if retry_after is not None:
        sent.append(("Retry-After", str(retry_after)))
    return AuthResult(
        outcome=Outcome.FORBIDDEN,
        status_code=429,
        token=token,
        reason=reason,
        headers=tuple(sent),
        error=error,
    )
