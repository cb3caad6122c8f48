"""The adapter contract: DESIGN §4 written once, inherited by one test class per adapter.

A subclass (``class TestMyAdapter(AdapterContract)``) provides:

- a ``build`` fixture: a function ``build(tokens, *, mount="") -> ContractClient`` that
  builds the adapter's app on the given :class:`ApiTokens` (mounted under ``mount``
  when given) and returns the uniform client of :mod:`tests.adapters.harness`. The app
  records what it saw (:func:`seen_from_environ` / :func:`seen_from_scope`) on these
  routes, for every method: ``/rest/{anything}`` and ``/public/{anything}``; ASGI apps
  also the websocket routes ``/rest/ws`` and ``/public/ws``, and a lifespan that appends
  ``"startup"`` and ``"shutdown"`` to ``recorder.lifespan``; with
  ``route_requirements``, :data:`NEEDS_TOKEN` and :data:`NEEDS_WRITE` too;
- its capabilities (class attributes, below).

A test a capability makes meaningless (a lifespan under WSGI) does not exist for that
subclass (it is removed when the subclass is made: no skip, nothing that passes
vacuously). A capability that changes an outcome (the Starlette extra never sees the
body) makes the test expect that adapter's own outcome.

Every request goes through the framework's in-process client and the real adapter; the
store is a ``MemoryStore`` and the hasher argon2's cheapest profile.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any, ClassVar, Protocol, TypeVar

import pytest

from apitokens import (
    ApiTokens,
    AuditEvent,
    AuthResult,
    AuthScheme,
    IssuedToken,
    MemoryStore,
    Outcome,
    Policy,
    Scope,
    StorageError,
)
from tests.adapters.harness import CLIENT_IP, Body, Headers, Message, Recorder, Reply, Seen
from tests.support import CHEAP_HASHER, Clock, make_tokens

MAX_BODY = 64
"""``Policy.max_body_bytes`` of the ``tokens`` fixture (small, for 413)."""
INSIDE_IP = "203.0.113.7"  # in the "ip" token's allowed network
OUTSIDE_IP = "198.51.100.9"
JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
NEEDS_TOKEN = "/rest/needs-token"
"""With ``route_requirements``: a route that refuses requests without a token."""
NEEDS_WRITE = "/rest/needs-write"
"""With ``route_requirements``: a route that needs a READ_WRITE token."""
JSON_RULE = "[post].*/rest/echo[JsonData::project==ABC]"
FORM_RULE = "[post].*/rest/form"

INVALID_REQUEST = {
    "error": "invalid_request",
    "error_description": "The request is malformed (its Authorization header or its target).",
}
INVALID_TOKEN = {
    "error": "invalid_token",
    "error_description": "The access token is missing, invalid, expired or revoked.",
}
INSUFFICIENT_SCOPE = {
    "error": "insufficient_scope",
    "error_description": "The access token does not allow this request.",
}
TOO_LARGE = {
    "error": "request_too_large",
    "error_description": "The request body is larger than this token's rules may inspect.",
}
TOO_MANY = {
    "error": "too_many_requests",
    "error_description": "Too many failed authentication attempts; try again later.",
}
UNAVAILABLE = {
    "error": "temporarily_unavailable",
    "error_description": "Authentication is temporarily unavailable.",
}
# RFC 6750 §3 and RFC 7617 §2: one challenge per enabled scheme.
BEARER_401 = (
    'Bearer realm="api", error="invalid_token", '
    'error_description="The access token is missing, invalid, expired or revoked."'
)
BEARER_NO_ERROR = 'Bearer realm="api"'  # RFC 6750 §3.1: no error code without credentials
BASIC_401 = 'Basic realm="api", charset="UTF-8"'
BEARER_400 = 'Bearer realm="api", error="invalid_request"'
BEARER_403 = 'Bearer realm="api", error="insufficient_scope"'


class ContractClient(Protocol):
    """What a subclass's ``build`` returns (see :mod:`tests.adapters.harness`)."""

    recorder: Recorder

    def send(
        self,
        method: str = "GET",
        path: str = "/rest/x",
        *,
        query: str = "",
        headers: Headers = (),
        body: Body = b"",
        client_ip: str = CLIENT_IP,
        target: str | None = None,
    ) -> Reply: ...


Build = Callable[..., Any]
F = TypeVar("F", bound=Callable[..., Any])


def requires(capability: str) -> Callable[[F], F]:
    """Mark a test as existing only for adapters with ``capability`` true."""

    def mark(test: F) -> F:
        test.__contract_requires__ = capability  # type: ignore[attr-defined]
        return test

    return mark


def bearer(secret: str) -> list[tuple[str, str]]:
    return [("Authorization", f"Bearer {secret}")]


def basic(user: str, password: str) -> list[tuple[str, str]]:
    raw = base64.b64encode(f"{user}:{password}".encode()).decode()
    return [("Authorization", f"Basic {raw}")]


def rows(tokens: ApiTokens) -> list[AuditEvent]:
    """Every authentication's audit event, newest first (written first: ``flush``)."""
    tokens.flush()
    return tokens.audit(action="authenticate", limit=1000)


def issue_all(tokens: ApiTokens) -> dict[str, IssuedToken]:
    """One token of every kind, each owned by its own user."""
    return {
        "read": tokens.create(actor="alice", name="read"),
        "write": tokens.create(actor="bob", name="write", scope=Scope.READ_WRITE),
        "rules": tokens.create(actor="carol", name="rules", restrictions=[".*/rest/api/.*"]),
        "ip": tokens.create(
            actor="dave", name="ip", allowed_ips=["203.0.113.0/24", "2001:db8::/32"]
        ),
        "json": tokens.create(
            actor="erin", name="json", scope=Scope.READ_WRITE, restrictions=[JSON_RULE, FORM_RULE]
        ),
    }


class FailingStore(MemoryStore):
    """A MemoryStore whose ``get`` raises ``error`` once ``failing`` is set."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error
        self.failing = False

    def get(self, token_id: str) -> Any:  # a StoredToken, private today
        if self.failing:
            raise self.error
        return super().get(token_id)


class AdapterContract:
    """DESIGN §4 for one adapter. Not collected itself (no ``Test`` prefix)."""

    # -- capabilities a subclass declares ----------------------------------------------------

    interface: ClassVar[str]
    """``"wsgi"``: the app sees ``REMOTE_USER``; ``"asgi"``: ``scope["user"]``/``["auth"]``."""
    lifespan: ClassVar[bool] = False
    """The app has an ASGI lifespan, which must pass through (not applicable to WSGI)."""
    websocket: ClassVar[bool] = False
    """Websocket handshakes are checked like a GET (not applicable to WSGI)."""
    websocket_refusal_code: ClassVar[int] = 1008
    """The close code of a refused handshake (docs/middleware.md says 1008)."""
    checks_json_bodies: ClassVar[bool] = True
    """The adapter reads the body for a JSON rule. ``False``: it never sees the body, so
    a token whose rules need it is refused with 403 (the Starlette extra's backend)."""
    route_requirements: ClassVar[bool] = False
    """The app has :data:`NEEDS_TOKEN` and :data:`NEEDS_WRITE` routes (the core flow's
    ``Requirement``: the Starlette extra's ``RequireToken``, the middleware's ``require=``)."""
    requirement_after_decision: ClassVar[bool] = False
    """The route's requirement is held to a decision already recorded before routing (the
    extra's backend decides in ``AuthenticationMiddleware``): a token refused by the route
    has that earlier success row too. ``False``: one decision, one row."""
    chunked_bodies: ClassVar[bool] = True
    """The framework reads a chunked body (one without ``Content-Length``). ``False``:
    Django under WSGI reads ``Content-Length`` bytes only, so a chunked body is empty to
    the rules and the view alike: a JSON rule refuses it (403), and a view gets ``b""``."""
    unbound_tokens_are_users: ClassVar[bool] = True
    """The app's user for an unbound token is its Basic username. ``False``: the app gives
    it no user of its own (Django: the name is the client's word, no one it vouches for)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in dir(cls):
            if name.startswith("test_"):
                need = getattr(getattr(cls, name), "__contract_requires__", None)
                if need is not None and not getattr(cls, need):
                    setattr(cls, name, None)  # not applicable: the test does not exist

    # -- fixtures ---------------------------------------------------------------------------------

    @pytest.fixture
    def clock(self) -> Clock:
        return Clock()

    @pytest.fixture
    def tokens(self, clock: Clock) -> Iterator[ApiTokens]:
        """Protects ``/rest/``; a throttle no test reaches but the one that means to."""
        with make_tokens(
            clock=clock,
            protected_paths=["/rest/"],
            max_body_bytes=MAX_BODY,
            max_failed_attempts=10_000,
        ) as tokens:
            yield tokens

    @pytest.fixture
    def strict_tokens(self, clock: Clock) -> Iterator[ApiTokens]:
        """Protects ``/rest/`` with ``allow_other_auth=False``: only tokens get in."""
        with make_tokens(
            clock=clock,
            protected_paths=["/rest/"],
            allow_other_auth=False,
            max_failed_attempts=10_000,
        ) as tokens:
            yield tokens

    @pytest.fixture
    def issued(self, tokens: ApiTokens) -> dict[str, IssuedToken]:
        """read (alice), write (bob), rules (carol), ip (dave), json (erin)."""
        return issue_all(tokens)

    @pytest.fixture
    def client(self, build: Build, tokens: ApiTokens) -> ContractClient:
        client: ContractClient = build(tokens)
        return client

    # -- what the app sees ----------------------------------------------------------------------

    def assert_app_saw_user(self, seen: Seen | None, user: str, scopes: list[str]) -> None:
        assert seen is not None, "the app was not reached"
        assert (seen.user, seen.scopes) == (user, scopes)
        if self.interface == "wsgi":
            assert seen.native["REMOTE_USER"] == user
        else:
            person = seen.native["user"]  # Starlette's request.user
            assert (person.is_authenticated, person.display_name, person.identity) == (
                True,
                user,
                user,
            )
            assert list(seen.native["auth"].scopes) == scopes  # request.auth.scopes

    def assert_app_saw_unbound_token(self, seen: Seen | None, user: str) -> None:
        """With ``unbound_tokens_are_users = False``: the token, and no user of the app's."""
        raise NotImplementedError

    def assert_app_saw_nobody(self, seen: Seen | None) -> None:
        assert seen is not None, "the app was not reached"
        assert seen.user is None
        assert seen.result is None
        if self.interface == "wsgi":
            assert seen.native["REMOTE_USER"] is None
        else:
            # request.user and request.auth work on every request (DESIGN §4).
            person = seen.native["user"]
            assert person is not None and not person.is_authenticated
            assert person.display_name == ""
            assert seen.scopes == []

    def assert_refused(
        self,
        reply: Reply,
        status: int,
        body: dict[str, str],
        challenges: list[str] | None = None,
    ) -> None:
        """A refusal: ``status``, the JSON body, never the app; ``challenges`` if given.

        Several challenges may come as several ``WWW-Authenticate`` headers or folded into
        one (RFC 9110 §11.6.1): they are compared as the folded list.
        """
        assert reply.status == status, (reply.status, reply.body)
        assert reply.seen is None, "a refused request reached the app"
        assert reply.header("content-type") == [JSON]
        assert reply.json() == body
        if challenges is not None:
            assert ", ".join(reply.header("www-authenticate")) == ", ".join(challenges)

    # -- success ----------------------------------------------------------------------------------

    def test_a_bearer_token_reaches_the_app_as_its_user(
        self, client: ContractClient, tokens: ApiTokens, issued: dict[str, IssuedToken]
    ) -> None:
        token = issued["read"]
        reply = client.send("GET", "/rest/api/issue/1", headers=bearer(token.secret))
        assert reply.status == 200
        self.assert_app_saw_user(reply.seen, "alice", ["authenticated", "read"])
        assert reply.seen is not None
        assert reply.seen.authorization == f"Bearer {token.secret}"  # left for the app
        [event] = rows(tokens)
        assert (event.outcome, event.token_id, event.user) == (
            Outcome.SUCCESS,
            token.token.id,
            "alice",
        )
        assert (event.method, event.path, event.client_ip) == (
            "GET",
            "/rest/api/issue/1",
            CLIENT_IP,
        )

    def test_a_basic_owner_and_token_reach_the_app(
        self, client: ContractClient, tokens: ApiTokens, issued: dict[str, IssuedToken]
    ) -> None:
        reply = client.send("POST", "/rest/api/x", headers=basic("bob", issued["write"].secret))
        assert reply.status == 200
        self.assert_app_saw_user(reply.seen, "bob", ["authenticated", "read", "write"])
        [event] = rows(tokens)
        assert (event.outcome, event.user, event.method) == (Outcome.SUCCESS, "bob", "POST")

    @pytest.mark.parametrize("header", ["X-Run-As", "x_run_as", "X_Run_As"])
    def test_a_token_may_run_as_another_user(self, build: Build, clock: Clock, header: str) -> None:
        """``Policy.run_as_groups``: the app sees the user acted as; the owner in the audit."""
        directory = {"alice": {"support"}, "bob": set()}
        with make_tokens(
            clock=clock,
            groups=lambda user: directory.get(user, set()),
            protected_paths=["/rest/"],
            run_as_groups=frozenset({"support"}),
        ) as tokens:
            client = build(tokens)
            support = tokens.create(actor="alice", name="support")
            reply = client.send(
                "GET", "/rest/x", headers=[*bearer(support.secret), (header, "bob")]
            )
            assert reply.status == 200, reply.body
            self.assert_app_saw_user(reply.seen, "bob", ["authenticated", "read"])
            assert reply.seen is not None and reply.seen.result is not None
            assert reply.seen.result.real_user == "alice"
            [event] = rows(tokens)
            assert (event.outcome, event.user, event.actor) == (Outcome.SUCCESS, "bob", "alice")
            # Anyone else sending it is refused, never ignored (bob is in no run-as group).
            other = tokens.create(actor="bob", name="mine")
            refused = client.send(
                "GET", "/rest/x", headers=[*bearer(other.secret), (header, "alice")]
            )
            self.assert_refused(refused, 403, INSUFFICIENT_SCOPE)
            assert (rows(tokens)[0].user, rows(tokens)[0].actor) == ("alice", "bob")

    def test_the_app_gets_the_decision(
        self, client: ContractClient, issued: dict[str, IssuedToken]
    ) -> None:
        """WSGI ``environ["apitokens.auth"]``, ASGI ``scope["apitokens.auth"]`` (DESIGN §4)."""
        token = issued["write"]
        reply = client.send("PUT", "/rest/api/x", headers=bearer(token.secret))
        assert reply.status == 200
        assert reply.seen is not None
        result = reply.seen.result
        assert isinstance(result, AuthResult), result
        assert (result.outcome, result.user, result.scopes) == (
            Outcome.SUCCESS,
            "bob",
            ["authenticated", "read", "write"],
        )
        assert result.token is not None and result.token.id == token.token.id

    def test_the_query_reaches_the_rules(self, client: ContractClient, tokens: ApiTokens) -> None:
        issued = tokens.create(
            actor="alice", name="q", restrictions=["[get].*/rest/search[QueryParam::project==ABC]"]
        )
        auth = bearer(issued.secret)
        ok = client.send("GET", "/rest/search", query="project=ABC&x=1", headers=auth)
        assert ok.status == 200
        assert ok.seen is not None and ok.seen.query == "project=ABC&x=1"
        for query in ("project=XYZ", "", "project=ABC&project=XYZ"):
            reply = client.send("GET", "/rest/search", query=query, headers=auth)
            self.assert_refused(reply, 403, INSUFFICIENT_SCOPE, [BEARER_403])
        assert [e.outcome for e in rows(tokens)] == [Outcome.FORBIDDEN] * 3 + [Outcome.SUCCESS]

    # -- 400 --------------------------------------------------------------------------------------

    def test_two_authorization_headers_are_400(
        self, client: ContractClient, tokens: ApiTokens, issued: dict[str, IssuedToken]
    ) -> None:
        secret = issued["read"].secret
        for headers in (
            bearer(secret) * 2,
            [*basic("alice", "hunter2"), *bearer(secret)],
            basic("alice", "hunter2") * 2,  # two passwords are not passed through either
        ):
            reply = client.send("GET", "/rest/x", headers=headers)
            self.assert_refused(reply, 400, INVALID_REQUEST, [BEARER_400])
        assert [e.outcome for e in rows(tokens)] == [Outcome.FAILED] * 3

    @pytest.mark.parametrize(
        "authorization",
        [
            "Basic !!",
            "Basic " + base64.b64encode(b"no-colon").decode(),
            "Bearer",
            "Bearer a b",
            "Bearer " + "a" * 9000,
        ],
        ids=["bad-base64", "basic-without-colon", "empty-bearer", "two-words", "over-8k"],
    )
    def test_a_malformed_authorization_header_is_400(
        self, client: ContractClient, tokens: ApiTokens, authorization: str
    ) -> None:
        reply = client.send("GET", "/rest/x", headers=[("Authorization", authorization)])
        self.assert_refused(reply, 400, INVALID_REQUEST, [BEARER_400])
        [event] = rows(tokens)
        assert event.outcome is Outcome.FAILED

    def test_a_token_in_an_unknown_scheme_is_400(
        self, client: ContractClient, tokens: ApiTokens, issued: dict[str, IssuedToken]
    ) -> None:
        secret = issued["read"].secret
        for value in (f"Token {secret}", f"token={secret}"):
            reply = client.send("GET", "/rest/x", headers=[("Authorization", value)])
            self.assert_refused(reply, 400, INVALID_REQUEST)
        reasons = [e.reason for e in rows(tokens)]
        assert reasons == ["token sent with an unsupported authorization scheme"] * 2

    @pytest.mark.parametrize("target", ["rest/admin", "http:rest/admin", "rest/%61dmin"])
    def test_a_target_that_is_not_origin_form_is_400(
        self, client: ContractClient, tokens: ApiTokens, target: str
    ) -> None:
        reply = client.send("GET", target=target, headers=basic("alice", "hunter2"))
        self.assert_refused(reply, 400, INVALID_REQUEST)
        [event] = rows(tokens)
        assert (event.outcome, event.reason) == (
            Outcome.FAILED,
            "request target is not an absolute path",
        )

    def test_a_fragment_in_the_target_is_400(
        self, client: ContractClient, tokens: ApiTokens
    ) -> None:
        """The rules would see "/rest/admin#/rest/issue/JRA-1"; servers route "/rest/admin"."""
        issued = tokens.create(actor="alice", name="jra", restrictions=[".*/rest/issue/JRA.*"])
        reply = client.send(
            "GET", target="/rest/admin#/rest/issue/JRA-1", headers=bearer(issued.secret)
        )
        self.assert_refused(reply, 400, INVALID_REQUEST)
        [event] = rows(tokens)
        assert (event.outcome, event.reason) == (Outcome.FAILED, "request target has a fragment")
        public = client.send("GET", target="/public/x#y")  # unprotected: untouched
        assert public.status == 200 and public.seen is not None
        assert len(rows(tokens)) == 1

    # -- 401 --------------------------------------------------------------------------------------

    def test_refused_tokens_are_401_and_all_look_alike(
        self,
        client: ContractClient,
        tokens: ApiTokens,
        issued: dict[str, IssuedToken],
        clock: Clock,
    ) -> None:
        """Unknown id, wrong secret, bad checksum, wrong Basic user, revoked, expired: one
        answer, which never tells whether the id exists; the reason is in the audit log."""
        fmt = tokens.policy.token_format
        read = issued["read"]
        revoked = tokens.create(actor="alice", name="revoked")
        expiring = tokens.create(actor="alice", name="short", expires_in=timedelta(hours=1))
        assert client.send("GET", "/rest/x", headers=bearer(revoked.secret)).status == 200
        assert client.send("GET", "/rest/x", headers=bearer(expiring.secret)).status == 200
        tokens.revoke(actor="alice", token_id=revoked.token.id)
        clock.advance(hours=2)
        last = read.secret[-1]
        cases = [
            ("unknown token id", bearer(fmt.issue().value)),
            ("wrong secret", bearer(fmt.issue(read.token.id).value)),
            (
                "malformed token or wrong checksum",
                bearer(read.secret[:-1] + ("A" if last != "A" else "B")),
            ),
            ("Basic username is not the token's owner", basic("mallory", read.secret)),
            ("token revoked", bearer(revoked.secret)),
            ("token expired", bearer(expiring.secret)),
        ]
        replies = []
        for _, headers in cases:
            reply = client.send("GET", "/rest/x", headers=headers)
            self.assert_refused(reply, 401, INVALID_TOKEN, [BEARER_401, BASIC_401])
            replies.append((reply.status, reply.body, reply.header("www-authenticate")))
        assert all(r == replies[0] for r in replies)
        events = rows(tokens)[: len(cases)]
        assert [(e.outcome, e.reason) for e in reversed(events)] == [
            (Outcome.FAILED, reason) for reason, _ in cases
        ]
        assert all(e.path == "/rest/x" and e.client_ip == CLIENT_IP for e in events)

    def test_other_auth_off_lets_only_tokens_in(
        self, build: Build, strict_tokens: ApiTokens
    ) -> None:
        client = build(strict_tokens)
        issued = strict_tokens.create(actor="alice", name="ci")
        password = client.send("GET", "/rest/x", headers=basic("alice", "hunter2"))
        self.assert_refused(password, 401, INVALID_TOKEN, [BEARER_401, BASIC_401])
        jwt = client.send("GET", "/rest/x", headers=[("Authorization", "Bearer e30.e30.sig")])
        self.assert_refused(jwt, 401, INVALID_TOKEN, [BEARER_401, BASIC_401])
        nothing = client.send("GET", "/rest/x")
        self.assert_refused(nothing, 401, INVALID_TOKEN, [BEARER_NO_ERROR, BASIC_401])
        ok = client.send("GET", "/rest/x", headers=bearer(issued.secret))
        assert ok.status == 200
        self.assert_app_saw_user(ok.seen, "alice", ["authenticated", "read"])
        public = client.send("GET", "/public/x", headers=basic("alice", "hunter2"))
        assert public.status == 200
        self.assert_app_saw_nobody(public.seen)
        assert [e.outcome for e in rows(strict_tokens)] == [Outcome.SUCCESS] + [Outcome.FAILED] * 3

    @pytest.mark.parametrize("scheme", [AuthScheme.BEARER, AuthScheme.BASIC])
    def test_a_token_over_a_turned_off_scheme_is_401(
        self, build: Build, clock: Clock, scheme: AuthScheme
    ) -> None:
        """Never passed through; the challenges name only the enabled scheme."""
        with make_tokens(clock=clock, protected_paths=["/rest/"], auth_schemes=scheme) as tokens:
            client = build(tokens)
            issued = tokens.create(actor="alice", name="ci")
            as_bearer, as_basic = bearer(issued.secret), basic("alice", issued.secret)
            on, off = (
                (as_bearer, as_basic) if scheme is AuthScheme.BEARER else (as_basic, as_bearer)
            )
            refused = client.send("GET", "/rest/x", headers=off)
            challenge = BEARER_401 if scheme is AuthScheme.BEARER else BASIC_401
            self.assert_refused(refused, 401, INVALID_TOKEN, [challenge])
            ok = client.send("GET", "/rest/x", headers=on)
            assert ok.status == 200
            self.assert_app_saw_user(ok.seen, "alice", ["authenticated", "read"])
            assert [e.outcome for e in rows(tokens)] == [Outcome.SUCCESS, Outcome.FAILED]

    def test_an_owner_no_longer_allowed_tokens_is_401(self, build: Build, clock: Clock) -> None:
        directory = {"alice": {"api"}}
        policy = Policy(protected_paths=["/rest/"], token_users=frozenset({"api"}))
        with ApiTokens(
            MemoryStore(),
            policy=policy,
            groups=lambda user: directory.get(user, set()),
            hasher=CHEAP_HASHER,
            clock=clock,
            cache_ttl=0,  # the groups are asked again on every request
        ) as tokens:
            client = build(tokens)
            issued = tokens.create(actor="alice", name="ci")
            assert client.send("GET", "/rest/x", headers=bearer(issued.secret)).status == 200
            directory["alice"] = set()  # left the group that may use tokens
            refused = client.send("GET", "/rest/x", headers=bearer(issued.secret))
            self.assert_refused(refused, 401, INVALID_TOKEN, [BEARER_401, BASIC_401])
            events = rows(tokens)
            assert [(e.outcome, e.user) for e in events] == [
                (Outcome.FAILED, "alice"),
                (Outcome.SUCCESS, "alice"),
            ]
            assert events[0].reason == "user 'alice' may not use tokens"

    def test_an_unbound_token_is_its_basic_user_and_401_over_bearer(
        self, build: Build, clock: Clock
    ) -> None:
        with make_tokens(
            clock=clock,
            protected_paths=["/rest/"],
            allow_unbound_tokens=True,
            token_admins=frozenset({"admins"}),
            groups=lambda user: {"admins"} if user == "admin" else set(),
        ) as tokens:
            client = build(tokens)
            issued = tokens.create(actor="admin", name="shared", unbound=True)
            ok = client.send("GET", "/rest/x", headers=basic("zoe", issued.secret))
            assert ok.status == 200
            if self.unbound_tokens_are_users:
                self.assert_app_saw_user(ok.seen, "zoe", ["authenticated", "read"])
            else:
                self.assert_app_saw_unbound_token(ok.seen, "zoe")
            refused = client.send("GET", "/rest/x", headers=bearer(issued.secret))
            self.assert_refused(refused, 401, INVALID_TOKEN, [BEARER_401, BASIC_401])
            events = rows(tokens)
            assert [(e.outcome, e.user) for e in events] == [
                (Outcome.FAILED, None),
                (Outcome.SUCCESS, "zoe"),
            ]
            assert events[0].reason == "unbound token sent with Bearer"

    # -- 403 --------------------------------------------------------------------------------------

    @pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS"])
    def test_a_read_only_token_may_read(
        self, client: ContractClient, tokens: ApiTokens, issued: dict[str, IssuedToken], method: str
    ) -> None:
        reply = client.send(method, "/rest/api/x", headers=bearer(issued["read"].secret))
        assert reply.status == 200
        self.assert_app_saw_user(reply.seen, "alice", ["authenticated", "read"])
        assert reply.seen is not None and reply.seen.method == method
        [event] = rows(tokens)
        assert (event.outcome, event.method) == (Outcome.SUCCESS, method)

    @pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
    def test_a_read_only_token_cannot_write(
        self, client: ContractClient, tokens: ApiTokens, issued: dict[str, IssuedToken], method: str
    ) -> None:
        reply = client.send(
            method, "/rest/api/x", headers=bearer(issued["read"].secret), body=b"{}"
        )
        self.assert_refused(reply, 403, INSUFFICIENT_SCOPE, [BEARER_403])
        [event] = rows(tokens)
        assert (event.outcome, event.user, event.token_id, event.method) == (
            Outcome.FORBIDDEN,
            "alice",
            issued["read"].token.id,
            method,
        )
        assert event.reason == f"method {method} outside the token's read_only scope"

    def test_rules_allow_only_matching_requests(
        self, client: ContractClient, tokens: ApiTokens, issued: dict[str, IssuedToken]
    ) -> None:
        auth = bearer(issued["rules"].secret)
        allowed = client.send("GET", "/rest/api/2/issue", headers=auth)
        assert allowed.status == 200
        self.assert_app_saw_user(allowed.seen, "carol", ["authenticated", "read"])
        denied = client.send("GET", "/rest/other/2/issue", headers=auth)
        self.assert_refused(denied, 403, INSUFFICIENT_SCOPE, [BEARER_403])
        assert [e.outcome for e in rows(tokens)] == [Outcome.FORBIDDEN, Outcome.SUCCESS]

    def test_allowed_ips_are_the_peer_address(
        self, client: ContractClient, tokens: ApiTokens, issued: dict[str, IssuedToken]
    ) -> None:
        auth = bearer(issued["ip"].secret)
        for ip in (INSIDE_IP, "2001:db8::5"):
            inside = client.send("GET", "/rest/x", headers=auth, client_ip=ip)
            assert inside.status == 200, ip
            self.assert_app_saw_user(inside.seen, "dave", ["authenticated", "read"])
        outside = client.send("GET", "/rest/x", headers=auth, client_ip=OUTSIDE_IP)
        self.assert_refused(outside, 403, INSUFFICIENT_SCOPE, [BEARER_403])
        spoofed = client.send(
            "GET", "/rest/x", headers=[*auth, ("X-Forwarded-For", INSIDE_IP)], client_ip=OUTSIDE_IP
        )
        self.assert_refused(spoofed, 403, INSUFFICIENT_SCOPE)  # no trusted proxy: not believed
        events = rows(tokens)
        assert [(e.outcome, e.client_ip) for e in events] == [
            (Outcome.FORBIDDEN, OUTSIDE_IP),
            (Outcome.FORBIDDEN, OUTSIDE_IP),
            (Outcome.SUCCESS, "2001:db8::5"),
            (Outcome.SUCCESS, INSIDE_IP),
        ]

    # -- JSON rules, 413 and the body -------------------------------------------------------------

    def assert_json_token_refused_unread(
        self, client: ContractClient, reply: Reply, tokens: ApiTokens, issued: IssuedToken
    ) -> None:
        """``checks_json_bodies = False``: a body a JSON rule needs is 403 by name, unread."""
        self.assert_refused(reply, 403, INSUFFICIENT_SCOPE)
        assert client.recorder.pulled == 0
        [event] = rows(tokens)
        assert (event.outcome, event.token_id, event.user) == (
            Outcome.FORBIDDEN,
            issued.token.id,
            "erin",
        )
        assert "JSON" in event.reason

    def assert_chunked_json_refused(
        self, reply: Reply, tokens: ApiTokens, issued: IssuedToken
    ) -> None:
        """``chunked_bodies = False``: the rules saw an empty body, which a JSON rule refuses."""
        self.assert_refused(reply, 403, INSUFFICIENT_SCOPE, [BEARER_403])
        [event] = rows(tokens)
        assert (event.outcome, event.token_id, event.user) == (
            Outcome.FORBIDDEN,
            issued.token.id,
            "erin",
        )

    @pytest.mark.parametrize("streamed", [False, True], ids=["whole", "chunked"])
    def test_the_body_a_json_rule_saw_is_replayed_byte_for_byte(
        self,
        client: ContractClient,
        tokens: ApiTokens,
        issued: dict[str, IssuedToken],
        streamed: bool,
    ) -> None:
        body = b'{"project": "ABC",\n "n": [1, 2.50], "s": "\\u00e9"}'
        sent: Body = [body[:9], body[9:30], body[30:]] if streamed else body
        headers = [*bearer(issued["json"].secret), ("Content-Type", JSON)]
        reply = client.send("POST", "/rest/echo", headers=headers, body=sent)
        if not self.checks_json_bodies:
            self.assert_json_token_refused_unread(client, reply, tokens, issued["json"])
            return
        if streamed and not self.chunked_bodies:
            self.assert_chunked_json_refused(reply, tokens, issued["json"])
            return
        assert reply.status == 200, reply.body
        assert reply.seen is not None
        assert reply.seen.body == body
        assert reply.seen.read_before_app == len(body)  # it was read, and replayed
        if streamed:
            assert client.recorder.messages >= 3  # it really came in pieces
        self.assert_app_saw_user(reply.seen, "erin", ["authenticated", "read", "write"])
        [event] = rows(tokens)
        assert (event.outcome, event.user, event.path) == (Outcome.SUCCESS, "erin", "/rest/echo")

    @pytest.mark.parametrize(
        "body",
        [b'{"project": "XYZ"}', b"not json", b'{"project": "ABC", "project": "ABC"}', b""],
        ids=["other-value", "not-json", "duplicate-keys", "empty"],
    )
    def test_a_json_rule_refuses_other_bodies(
        self, client: ContractClient, tokens: ApiTokens, issued: dict[str, IssuedToken], body: bytes
    ) -> None:
        headers = [*bearer(issued["json"].secret), ("Content-Type", JSON)]
        reply = client.send("POST", "/rest/echo", headers=headers, body=body)
        self.assert_refused(reply, 403, INSUFFICIENT_SCOPE, [BEARER_403])
        [event] = rows(tokens)
        assert (event.outcome, event.user) == (Outcome.FORBIDDEN, "erin")

    @pytest.mark.parametrize("streamed", [False, True], ids=["whole", "chunked"])
    def test_a_body_over_the_limit_for_a_json_rule_is_413(
        self,
        client: ContractClient,
        tokens: ApiTokens,
        issued: dict[str, IssuedToken],
        streamed: bool,
    ) -> None:
        json_token = issued["json"]
        headers = [*bearer(json_token.secret), ("Content-Type", JSON)]
        too_large = b'{"project": "ABC", "pad": "' + b"x" * MAX_BODY + b'"}'
        sent: Body = (
            [too_large[i : i + 10] for i in range(0, len(too_large), 10)] if streamed else too_large
        )
        reply = client.send("POST", "/rest/echo", headers=headers, body=sent)
        if not self.checks_json_bodies:
            self.assert_json_token_refused_unread(client, reply, tokens, json_token)
            return
        if streamed and not self.chunked_bodies:  # empty to the rules: not too large
            self.assert_chunked_json_refused(reply, tokens, json_token)
            return
        self.assert_refused(reply, 413, TOO_LARGE)
        [event] = rows(tokens)
        assert (event.outcome, event.user, event.token_id) == (
            Outcome.FORBIDDEN,
            "erin",
            json_token.token.id,
        )
        # Exactly at the limit is still read, matched and replayed.
        exact = b'{"project": "ABC", "pad": "' + b"x" * (MAX_BODY - 29) + b'"}'
        assert len(exact) == MAX_BODY
        ok = client.send("POST", "/rest/echo", headers=headers, body=exact)
        assert ok.status == 200 and ok.seen is not None and ok.seen.body == exact
        assert len(rows(tokens)) == 2

    def test_a_form_body_is_left_to_the_app_unread(
        self, client: ContractClient, tokens: ApiTokens, issued: dict[str, IssuedToken]
    ) -> None:
        """A JsonData clause fails on a non-JSON Content-Type without reading the body."""
        form = b"project=ABC&note=%7B%22project%22%3A%22ABC%22%7D" + b"&pad=" + b"x" * MAX_BODY
        headers = [*bearer(issued["json"].secret), ("Content-Type", FORM)]
        reply = client.send("POST", "/rest/form", headers=headers, body=form)
        assert reply.status == 200, reply.body
        assert reply.seen is not None
        assert reply.seen.read_before_app == 0  # over the limit, yet never read: no 413
        assert reply.seen.body == form
        # The JSON rule's route: refused on the Content-Type alone, nothing read.
        refused = client.send("POST", "/rest/echo", headers=headers, body=form)
        self.assert_refused(refused, 403, INSUFFICIENT_SCOPE)
        assert client.recorder.pulled == 0
        assert [e.outcome for e in rows(tokens)] == [Outcome.FORBIDDEN, Outcome.SUCCESS]

    @pytest.mark.parametrize("streamed", [False, True], ids=["whole", "chunked"])
    def test_a_token_without_json_rules_leaves_the_body_alone(
        self, client: ContractClient, issued: dict[str, IssuedToken], streamed: bool
    ) -> None:
        body = bytes(range(256)) * 2  # far over the limit, not JSON: never read, no 413
        sent: Body = [body[i : i + 100] for i in range(0, len(body), 100)] if streamed else body
        reply = client.send("POST", "/rest/echo", headers=bearer(issued["write"].secret), body=sent)
        assert reply.status == 200
        assert reply.seen is not None
        seen_body = body if self.chunked_bodies or not streamed else b""
        assert (reply.seen.read_before_app, reply.seen.body) == (0, seen_body)
        if streamed and self.interface == "asgi":  # (a WSGI app's read() takes it at once)
            assert client.recorder.messages >= 6  # it really came in pieces

    # -- 429 and 503 ------------------------------------------------------------------------------

    def test_too_many_failures_are_429_with_retry_after(self, build: Build, clock: Clock) -> None:
        with make_tokens(clock=clock, protected_paths=["/rest/"], max_failed_attempts=2) as tokens:
            client = build(tokens)
            good = tokens.create(actor="alice", name="ci")
            assert client.send("GET", "/rest/x", headers=bearer(good.secret)).status == 200
            wrong = bearer(tokens.policy.token_format.issue(good.token.id).value)
            for _ in range(2):
                assert client.send("GET", "/rest/x", headers=wrong).status == 401
            throttled = client.send("GET", "/rest/x", headers=wrong)
            self.assert_refused(throttled, 429, TOO_MANY)
            [retry_after] = throttled.header("retry-after")
            assert 0 < int(retry_after) <= 60
            # A secret this process verified is never refused for others' failures.
            again = client.send("GET", "/rest/x", headers=bearer(good.secret))
            assert again.status == 200
            # Another address is not throttled for this one's failures.
            assert client.send("GET", "/rest/x", headers=wrong, client_ip=INSIDE_IP).status == 401
            events = rows(tokens)
            assert [e.outcome for e in events] == [
                Outcome.FAILED,
                Outcome.SUCCESS,
                Outcome.FAILED,  # the 429: audited too
                Outcome.FAILED,
                Outcome.FAILED,
                Outcome.SUCCESS,
            ]
            assert events[2].reason == "too many failed attempts for this client address"

    def test_a_token_over_its_rate_limit_is_429_with_ratelimit_headers(
        self, build: Build, clock: Clock
    ) -> None:
        """DESIGN §11: a burst of N in a window, then 429 with Retry-After and RateLimit."""
        with make_tokens(clock=clock, protected_paths=["/rest/"]) as tokens:
            client = build(tokens)
            limited = tokens.create(actor="alice", name="ci", rate_limit="3/min")
            sent = [client.send("GET", "/rest/x", headers=bearer(limited.secret)) for _ in range(4)]
            assert [reply.status for reply in sent] == [200, 200, 200, 429]
            over = sent[3]
            assert over.seen is None  # the app never saw it
            assert json.loads(over.body)["error"] == "rate_limit_exceeded"
            window_left = 60 - clock().second  # windows start at whole minutes
            assert over.header("retry-after") == [str(window_left)]
            assert over.header("ratelimit-policy") == ['"rate";q=3;w=60']
            assert over.header("ratelimit") == [f'"rate";r=0;t={window_left}']
            event = rows(tokens)[0]
            assert (event.outcome, event.reason) == (
                Outcome.FORBIDDEN,
                "rate limit exceeded (3/min)",
            )
            clock.advance(seconds=window_left)  # the next window
            assert client.send("GET", "/rest/x", headers=bearer(limited.secret)).status == 200

    def test_a_token_whose_credits_are_spent_is_429(self, build: Build, clock: Clock) -> None:
        with make_tokens(clock=clock, protected_paths=["/rest/"]) as tokens:
            client = build(tokens)
            credited = tokens.create(actor="alice", name="ci", credits=2, refill="1/h")
            # A request refused for something else spends nothing.
            write = client.send("POST", "/rest/x", headers=bearer(credited.secret))
            self.assert_refused(write, 403, INSUFFICIENT_SCOPE)
            sent = [
                client.send("GET", "/rest/x", headers=bearer(credited.secret)) for _ in range(3)
            ]
            assert [reply.status for reply in sent] == [200, 200, 429]
            spent = sent[2]
            assert json.loads(spent.body)["error"] == "credits_spent"
            assert spent.header("ratelimit-policy") == ['"credits";q=2']
            [retry_after] = spent.header("retry-after")
            assert spent.header("ratelimit") == [f'"credits";r=0;t={retry_after}']
            assert rows(tokens)[0].reason == "credits spent (2, refill 1/h)"
            assert tokens.credits_left(credited.token.id) == 0
            clock.advance(seconds=int(retry_after))
            assert client.send("GET", "/rest/x", headers=bearer(credited.secret)).status == 200
            assert tokens.credits_left(credited.token.id) == 0

    @pytest.mark.parametrize(
        "error", [StorageError("disk on fire"), RuntimeError("a backend's own error")]
    )
    def test_a_store_that_fails_is_503_never_a_pass(
        self, build: Build, clock: Clock, error: Exception
    ) -> None:
        store = FailingStore(error)
        with make_tokens(store, clock=clock, protected_paths=["/rest/"]) as tokens:
            client = build(tokens)
            issued = tokens.create(actor="alice", name="ci")
            store.failing = True
            reply = client.send("GET", "/rest/x", headers=bearer(issued.secret))
            self.assert_refused(reply, 503, UNAVAILABLE)
            # Requests that need no token still reach the app.
            public = client.send("GET", "/rest/x", headers=basic("alice", "hunter2"))
            assert public.status == 200
            self.assert_app_saw_nobody(public.seen)
            [event] = rows(tokens)
            assert event.outcome is Outcome.FAILED
            assert event.reason.startswith("token store unavailable")

    def test_a_closed_audit_writer_is_503(
        self, client: ContractClient, tokens: ApiTokens, issued: dict[str, IssuedToken]
    ) -> None:
        assert client.send("GET", "/rest/x", headers=bearer(issued["read"].secret)).status == 200
        tokens.close()  # nothing can be recorded now: nothing is let in as authenticated
        for kind in ("read", "write"):  # warm (verified before) and cold
            reply = client.send("GET", "/rest/x", headers=bearer(issued[kind].secret))
            self.assert_refused(reply, 503, UNAVAILABLE)

    # -- pass-through -----------------------------------------------------------------------------

    @pytest.mark.parametrize(
        "authorization",
        [
            "Basic " + base64.b64encode(b"alice:hunter2").decode(),
            "Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig",
            "Digest username=alice",
            None,
        ],
        ids=["password", "jwt", "digest", "nothing"],
    )
    def test_foreign_credentials_pass_through_untouched(
        self, client: ContractClient, tokens: ApiTokens, authorization: str | None
    ) -> None:
        headers = [("Authorization", authorization)] if authorization else []
        reply = client.send("POST", "/rest/api/x", headers=headers, body=b"payload")
        assert reply.status == 200
        self.assert_app_saw_nobody(reply.seen)
        assert reply.seen is not None
        assert (reply.seen.authorization, reply.seen.body) == (authorization, b"payload")
        assert rows(tokens) == []

    def test_unprotected_paths_are_untouched(
        self, client: ContractClient, tokens: ApiTokens, issued: dict[str, IssuedToken]
    ) -> None:
        for authorization in (
            "Bearer apt_garbage",
            f"Bearer {issued['read'].secret}",
            f"Token {issued['read'].secret}",
            "Basic !!",
        ):
            reply = client.send("GET", "/public/x", headers=[("Authorization", authorization)])
            assert reply.status == 200, authorization
            self.assert_app_saw_nobody(reply.seen)
            assert reply.seen is not None and reply.seen.authorization == authorization
        assert rows(tokens) == []

    def test_a_remote_user_header_never_becomes_the_user(
        self, client: ContractClient, tokens: ApiTokens
    ) -> None:
        headers = [("Remote-User", "admin"), ("X-Remote-User", "admin"), *basic("a", "b")]
        reply = client.send("GET", "/rest/x", headers=headers)
        assert reply.status == 200
        self.assert_app_saw_nobody(reply.seen)

    # -- the audit log ----------------------------------------------------------------------------

    def test_one_audit_row_per_decision_none_for_a_pass_through(
        self, client: ContractClient, tokens: ApiTokens, issued: dict[str, IssuedToken]
    ) -> None:
        fmt = tokens.policy.token_format
        read = bearer(issued["read"].secret)
        steps: list[tuple[str, Headers, Outcome | None]] = [
            ("/rest/x", read, Outcome.SUCCESS),
            ("/rest/x", read, Outcome.SUCCESS),  # warm: audited all the same
            ("/rest/x", bearer(fmt.issue().value), Outcome.FAILED),
            ("/rest/x", [("Authorization", "Basic !!")], Outcome.FAILED),
            ("/rest/x", basic("alice", "hunter2"), None),
            ("/rest/x", (), None),
            ("/public/x", read, None),
            ("/rest/x", bearer(issued["ip"].secret), Outcome.FORBIDDEN),
        ]
        expected: list[Outcome] = []
        for path, headers, outcome in steps:
            client.send("GET", path, headers=headers)
            if outcome is not None:
                expected.insert(0, outcome)
            assert [e.outcome for e in rows(tokens)] == expected, (path, headers)

    def test_no_secret_is_written_to_the_audit_log(
        self, client: ContractClient, tokens: ApiTokens, issued: dict[str, IssuedToken]
    ) -> None:
        """Wherever a token is sent: the id at most reaches the audit log."""
        good = issued["read"].secret
        leaked = issued["write"].secret
        forged = leaked[:-6] + ("000000" if not leaked.endswith("000000") else "111111")
        auth = bearer(good)
        client.send("GET", f"/rest/ok/{leaked}", headers=auth)
        client.send("GET", "/rest/x", query=f"q={leaked}", headers=auth)
        client.send("GET", "/rest/x", headers=basic(leaked, "pw"))
        client.send("GET", "/rest/x", headers=basic(forged, leaked))
        client.send("GET", "/rest/x", headers=bearer(forged))
        client.send("GET", "/rest/x", headers=[*auth, ("X-HTTP-Method-Override", leaked)])
        client.send("GET", "/rest/x", headers=[("Authorization", f"Token {leaked}")])
        events = rows(tokens)
        assert len(events) == 7
        secrets = [s[16:] for s in (good, leaked, forged)]  # after the prefix and the id
        for event in events:
            texts = [repr(event), *(str(getattr(event, f.name)) for f in dataclasses.fields(event))]
            for text in texts:
                for secret in secrets:
                    assert secret not in text, event

    # -- issue #6: the gaps between the check and the app -----------------------------------------

    @pytest.mark.parametrize(
        "header",
        [
            "X-HTTP-Method-Override",
            "X-HTTP-Method",
            "X-Method-Override",
            "X_HTTP_Method_Override",
            "x-http_method-override",
            "X_Method_Override",
        ],
    )
    def test_a_method_override_is_checked_as_well_as_the_method(
        self, client: ContractClient, tokens: ApiTokens, header: str
    ) -> None:
        read_only = tokens.create(actor="alice", name="ro")
        get_rule = tokens.create(
            actor="bob", name="get", scope=Scope.READ_WRITE, restrictions=["[GET].*/rest/issue/.*"]
        )
        read_write = tokens.create(actor="carol", name="rw", scope=Scope.READ_WRITE)
        for issued in (read_only, get_rule):
            auth = bearer(issued.secret)
            assert client.send("GET", "/rest/issue/A-1", headers=auth).status == 200
            refused = client.send("GET", "/rest/issue/A-1", headers=[*auth, (header, "DELETE")])
            self.assert_refused(refused, 403, INSUFFICIENT_SCOPE)
            assert "DELETE" in rows(tokens)[0].reason
        allowed = client.send(
            "GET", "/rest/issue/A-1", headers=[*bearer(read_write.secret), (header, "DELETE")]
        )
        assert allowed.status == 200
        self.assert_app_saw_user(allowed.seen, "carol", ["authenticated", "read", "write"])

    def test_a_mounted_app_is_still_protected(
        self, build: Build, strict_tokens: ApiTokens, tokens: ApiTokens
    ) -> None:
        client = build(strict_tokens, mount="/api")
        issued = strict_tokens.create(actor="alice", name="ci")
        nothing = client.send("GET", "/api/rest/admin")
        self.assert_refused(nothing, 401, INVALID_TOKEN, [BEARER_NO_ERROR, BASIC_401])
        password = client.send("GET", "/api/rest/admin", headers=basic("alice", "pw"))
        self.assert_refused(password, 401, INVALID_TOKEN, [BEARER_401, BASIC_401])
        token = client.send("GET", "/api/rest/admin", headers=bearer(issued.secret))
        assert token.status == 200
        self.assert_app_saw_user(token.seen, "alice", ["authenticated", "read"])
        public = client.send("GET", "/api/public/x")
        assert public.status == 200
        self.assert_app_saw_nobody(public.seen)
        assert [e.outcome for e in rows(strict_tokens)] == [
            Outcome.SUCCESS,
            Outcome.FAILED,
            Outcome.FAILED,
        ]
        # Other credentials allowed: a read-only token still cannot write there.
        lenient = build(tokens, mount="/api")
        read_only = tokens.create(actor="alice", name="ro")
        write = lenient.send("POST", "/api/rest/x", headers=bearer(read_only.secret))
        self.assert_refused(write, 403, INSUFFICIENT_SCOPE)

    @pytest.mark.parametrize(
        "shape",
        [
            "Token {}",
            "token={}",
            "Bearer x{}",
            "Bearer  {}",
            "Bearer\t{}",
            "bearer {}",
            " Bearer {}",
            "Bearer {} ",
            "basic-username",
            "basic-username-and-password",
        ],
    )
    def test_a_token_looking_value_is_never_passed_through(
        self, client: ContractClient, tokens: ApiTokens, issued: dict[str, IssuedToken], shape: str
    ) -> None:
        secret = issued["read"].secret
        if shape == "basic-username":
            headers = basic(secret, "hunter2")
        elif shape == "basic-username-and-password":
            headers = basic(secret, secret)
        else:
            headers = [("Authorization", shape.format(secret))]
        reply = client.send("GET", "/rest/x", headers=headers)
        [event] = rows(tokens)  # a decision, never a pass-through
        if reply.status == 200:  # checked, and it is alice's token
            self.assert_app_saw_user(reply.seen, "alice", ["authenticated", "read"])
            assert event.outcome is Outcome.SUCCESS
        else:
            assert reply.status in (400, 401), reply.status
            assert reply.seen is None
            assert event.outcome is Outcome.FAILED

    # -- non-HTTP scopes (ASGI) -------------------------------------------------------------------

    @requires("lifespan")
    def test_the_lifespan_passes_through(self, build: Build, clock: Clock) -> None:
        # Every path protected, only tokens accepted: a lifespan taken for a request would be
        # refused, so an app that starts and stops proves it was passed through.
        with make_tokens(clock=clock, protected_paths=["/"], allow_other_auth=False) as tokens:
            client = build(tokens)
            sent = client.lifespan()
            assert [m["type"] for m in sent] == [
                "lifespan.startup.complete",
                "lifespan.shutdown.complete",
            ]
            assert client.recorder.lifespan == ["startup", "shutdown"]
            assert rows(tokens) == []

    @requires("websocket")
    def test_a_websocket_with_a_token_is_accepted_as_its_user(
        self, client: Any, tokens: ApiTokens, issued: dict[str, IssuedToken]
    ) -> None:
        sent: list[Message] = client.websocket("/rest/ws", headers=bearer(issued["read"].secret))
        assert [m["type"] for m in sent] == [
            "websocket.accept",
            "websocket.send",
            "websocket.close",
        ]
        self.assert_app_saw_user(client.recorder.seen[-1], "alice", ["authenticated", "read"])
        [event] = rows(tokens)
        assert (event.outcome, event.method, event.path) == (Outcome.SUCCESS, "GET", "/rest/ws")

    @requires("websocket")
    def test_a_refused_websocket_is_closed_before_it_is_accepted(
        self, client: Any, tokens: ApiTokens, issued: dict[str, IssuedToken]
    ) -> None:
        unknown = tokens.policy.token_format.issue().value
        for headers, outcome in (
            (bearer(unknown), Outcome.FAILED),
            (bearer(issued["ip"].secret), Outcome.FORBIDDEN),
        ):
            sent: list[Message] = client.websocket("/rest/ws", headers=headers)
            assert [(m["type"], m.get("code")) for m in sent] == [
                ("websocket.close", self.websocket_refusal_code)
            ]
            assert client.recorder.seen == []
            assert rows(tokens)[0].outcome is outcome
        assert len(rows(tokens)) == 2

    @requires("websocket")
    def test_a_websocket_without_a_token_gets_an_anonymous_user(
        self, client: Any, tokens: ApiTokens
    ) -> None:
        for path in ("/rest/ws", "/public/ws"):
            sent: list[Message] = client.websocket(path, headers=basic("alice", "pw"))
            assert [m["type"] for m in sent] == [
                "websocket.accept",
                "websocket.send",
                "websocket.close",
            ]
            self.assert_app_saw_nobody(client.recorder.seen[-1])
        assert rows(tokens) == []

    # -- route-level requirements -----------------------------------------------------------------

    @requires("route_requirements")
    def test_a_route_that_needs_a_token_refuses_a_request_without_one(
        self, client: ContractClient, tokens: ApiTokens
    ) -> None:
        reply = client.send("GET", NEEDS_TOKEN)
        self.assert_refused(reply, 401, INVALID_TOKEN, [BEARER_NO_ERROR, BASIC_401])
        [event] = rows(tokens)
        assert (event.outcome, event.reason, event.path) == (
            Outcome.FAILED,
            "route requires a token",
            NEEDS_TOKEN,
        )

    @requires("route_requirements")
    def test_a_route_that_needs_a_token_refuses_a_password(
        self, client: ContractClient, tokens: ApiTokens
    ) -> None:
        """As ``allow_other_auth=False`` does: credentials were sent, so ``error=``."""
        reply = client.send("GET", NEEDS_TOKEN, headers=basic("alice", "hunter2"))
        self.assert_refused(reply, 401, INVALID_TOKEN, [BEARER_401, BASIC_401])
        [event] = rows(tokens)
        assert (event.outcome, event.reason) == (Outcome.FAILED, "route requires a token")

    @requires("route_requirements")
    def test_a_route_that_needs_read_write_refuses_a_read_only_token(
        self, client: ContractClient, tokens: ApiTokens, issued: dict[str, IssuedToken]
    ) -> None:
        reply = client.send("GET", NEEDS_WRITE, headers=bearer(issued["read"].secret))
        self.assert_refused(reply, 403, INSUFFICIENT_SCOPE, [BEARER_403])
        event, *earlier = rows(tokens)
        expected_earlier = [Outcome.SUCCESS] if self.requirement_after_decision else []
        assert [e.outcome for e in earlier] == expected_earlier
        assert (event.outcome, event.user, event.token_id, event.reason) == (
            Outcome.FORBIDDEN,
            "alice",
            issued["read"].token.id,
            "route requires a READ_WRITE token",
        )

    @requires("route_requirements")
    def test_a_route_that_refuses_a_limited_token_after_its_decision_counts_the_use(
        self, build: Build, clock: Clock
    ) -> None:
        """DESIGN §11: a request refused in the decision spends nothing; a route's own
        requirement held to a decision recorded already (the middleware's: audited as a
        success, then refused) counts the use, once (DRF checks a permission many times)."""
        with make_tokens(clock=clock, protected_paths=["/rest/"]) as tokens:
            client = build(tokens)
            limited = tokens.create(actor="alice", name="ci", credits=3)
            reply = client.send("GET", NEEDS_WRITE, headers=bearer(limited.secret))
            self.assert_refused(reply, 403, INSUFFICIENT_SCOPE, [BEARER_403])
            left = 2 if self.requirement_after_decision else 3
            assert tokens.credits_left(limited.token.id) == left
            statuses = [
                client.send("GET", NEEDS_TOKEN, headers=bearer(limited.secret)).status
                for _ in range(left + 1)
            ]
            assert statuses == [200] * left + [429]

    @requires("route_requirements")
    def test_routes_with_requirements_let_good_tokens_in_audited_once(
        self, client: ContractClient, tokens: ApiTokens, issued: dict[str, IssuedToken]
    ) -> None:
        read = client.send("GET", NEEDS_TOKEN, headers=bearer(issued["read"].secret))
        assert read.status == 200
        self.assert_app_saw_user(read.seen, "alice", ["authenticated", "read"])
        for method in ("GET", "POST"):
            write = client.send(method, NEEDS_WRITE, headers=bearer(issued["write"].secret))
            assert write.status == 200
            self.assert_app_saw_user(write.seen, "bob", ["authenticated", "read", "write"])
        assert [e.outcome for e in rows(tokens)] == [Outcome.SUCCESS] * 3
