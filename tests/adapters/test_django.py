"""The adapter contract for ``apitokens.django.TokenMiddleware``, under WSGI and under ASGI.

Django's own handlers (``WSGIHandler``, ``ASGIHandler``) run the test project's
middleware (sessions, CSRF, Django's auth, then ``TokenMiddleware``) in front of
the contract's routes (:mod:`tests.adapters.django_app`); each request is sent with
``settings.APITOKENS`` naming the test's ``ApiTokens`` and ``ROOT_URLCONF`` that app.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, BinaryIO

import pytest
from django.contrib.auth import get_user_model
from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.wsgi import WSGIHandler
from django.http import HttpRequest, HttpResponse
from django.test import override_settings

from apitokens import ApiTokens, AuthResult, Scope
from tests.adapters import django_app
from tests.adapters.contract import (
    INSUFFICIENT_SCOPE,
    JSON,
    AdapterContract,
    Build,
    bearer,
    rows,
)
from tests.adapters.harness import (
    CLIENT_IP,
    ASGIContractClient,
    Body,
    Environ,
    Headers,
    Recorder,
    Reply,
    Seen,
    WSGIContractClient,
)
from tests.support import Clock, Monotonic, make_tokens

USERS = ("alice", "bob", "carol", "dave", "erin", "zoe")
"""The contract's token owners (and the Basic user of its unbound token), as Django users."""


class DjangoClient:
    """A contract client whose requests name its ``ApiTokens`` in ``settings.APITOKENS``.

    The setting is overridden per request, as a project's tests would with
    ``override_settings``: ``get_tokens()`` resolves it afresh each time (it forgets on
    ``setting_changed``), so two clients of one test never share an instance.
    """

    def __init__(self, inner: WSGIContractClient | ASGIContractClient, dotted: str) -> None:
        self._inner = inner
        self._dotted = dotted
        self.recorder = inner.recorder

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
    ) -> Reply:
        with override_settings(APITOKENS=self._dotted, ROOT_URLCONF=django_app.__name__):
            return self._inner.send(
                method,
                path,
                query=query,
                headers=headers,
                body=body,
                client_ip=client_ip,
                target=target,
            )


def wsgi_app(recorder: Recorder) -> Callable[[Environ, Callable[..., Any]], Iterable[bytes]]:
    """Django's WSGI handler; the view finds the recorder in ``request.META``."""
    handler = WSGIHandler()

    def app(environ: Environ, start_response: Callable[..., Any]) -> Iterable[bytes]:
        environ[django_app.RECORDER] = recorder
        return handler(environ, start_response)

    return app


class _CountedBody:
    """Django's spooled body file, counting the bytes read from it (``recorder.pulled``)."""

    def __init__(self, file: BinaryIO, recorder: Recorder) -> None:
        self._file = file
        self._recorder = recorder

    def read(self, size: int = -1) -> bytes:
        return self._count(self._file.read(size))

    def readline(self, size: int = -1) -> bytes:
        return self._count(self._file.readline(size))

    def _count(self, data: bytes) -> bytes:
        self._recorder.pulled += len(data)
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)


class ContractASGIHandler(ASGIHandler):
    """Django's ASGI handler, probed where Django hands the body on to the request.

    Django's handler receives the whole body from the server (into a spooled file)
    before any middleware runs: the contract's probe at the ASGI ``receive`` would
    count it all as read before the view, whatever ``TokenMiddleware`` does. The
    count that tells whether the middleware read the body is of the reads from
    Django's body file, the stream ``request.body`` reads, as ``wsgi.input`` is under
    WSGI. (``recorder.messages`` still counts the ASGI messages the body came in.)
    """

    def __init__(self, recorder: Recorder) -> None:
        super().__init__()
        self.recorder = recorder

    def create_request(
        self, scope: dict[str, Any], body_file: BinaryIO
    ) -> tuple[HttpRequest | None, HttpResponse | None]:
        self.recorder.pulled = 0
        counted: Any = _CountedBody(body_file, self.recorder)
        request, error = super().create_request(scope, counted)
        if request is not None:
            request.META[django_app.RECORDER] = self.recorder
        return request, error


class DjangoContract(AdapterContract):
    """The contract for Django; what the view sees is Django's ``request.user``.

    Not ``REMOTE_USER`` nor ``scope["user"]``: ``request.user`` is the Django user
    whose username is the token's owner, ``request.auth`` the ``AuthResult``.
    """

    route_requirements = True  # DRF views with HasToken / HasReadWriteToken
    # The middleware decides (and records the success) before Django routes the request;
    # the DRF permission holds that decision to the view's requirement.
    requirement_after_decision = True
    # An unbound token's Basic username is the client's word: no Django user (DESIGN §9).
    unbound_tokens_are_users = False

    @pytest.fixture(autouse=True)
    def django_users(self) -> None:
        """The owners of the contract's tokens are active Django users (DESIGN §9)."""
        model = get_user_model()
        for name in USERS:
            model._default_manager.update_or_create(
                defaults={"is_active": True}, **{model.USERNAME_FIELD: name}
            )

    @pytest.fixture
    def build(self) -> Iterator[Build]:
        registered: list[str] = []

        def build(tokens: ApiTokens, *, mount: str = "") -> DjangoClient:
            dotted = django_app.register(tokens)
            registered.append(dotted)
            return DjangoClient(self.client_of(Recorder(), mount), dotted)

        yield build
        for dotted in registered:
            django_app.unregister(dotted)

    def client_of(self, recorder: Recorder, mount: str) -> WSGIContractClient | ASGIContractClient:
        raise NotImplementedError

    def assert_app_saw_user(self, seen: Seen | None, user: str, scopes: list[str]) -> None:
        assert seen is not None, "the app was not reached"
        assert (seen.user, seen.scopes) == (user, scopes)
        person = seen.native["user"]  # request.user, through Django's lazy object
        assert isinstance(person, get_user_model())
        assert (person.is_authenticated, person.is_active, person.get_username()) == (
            True,
            True,
            user,
        )
        assert isinstance(seen.native["auth"], AuthResult)  # request.auth
        assert seen.native["auth"] is seen.result
        assert seen.native["REMOTE_USER"] is None  # nothing else claims who it is

    def assert_app_saw_unbound_token(self, seen: Seen | None, user: str) -> None:
        assert seen is not None, "the app was not reached"
        person = seen.native["user"]
        assert not person.is_authenticated  # AnonymousUser, though a Django "zoe" exists
        auth = seen.native["auth"]
        assert isinstance(auth, AuthResult)
        assert (auth.user, auth.token.user if auth.token else "?") == (user, None)

    def assert_app_saw_nobody(self, seen: Seen | None) -> None:
        assert seen is not None, "the app was not reached"
        assert (seen.user, seen.result, seen.scopes) == (None, None, [])
        person = seen.native["user"]  # Django's AnonymousUser: no session login here
        assert not person.is_authenticated
        assert seen.native["auth"] is None
        assert seen.native["REMOTE_USER"] is None

    def test_run_as_needs_an_active_django_user(self, build: Build) -> None:
        """``X-Run-As`` names a Django user: ``request.user`` is that user, only while it is
        active (Django's user check holds for the user acted as, as for the owner)."""
        model = get_user_model()
        directory = {"alice": {"support"}}
        ticks = Monotonic()
        with make_tokens(
            clock=Clock(),
            monotonic=ticks,
            groups=lambda user: directory.get(user, set()),
            protected_paths=["/rest/"],
            run_as_groups=frozenset({"support"}),
        ) as tokens:
            client = build(tokens)
            support = tokens.create(actor="alice", name="support")
            headers = [*bearer(support.secret), ("X-Run-As", "bob")]
            reply = client.send("GET", "/rest/x", headers=headers)
            assert reply.status == 200, reply.body
            self.assert_app_saw_user(reply.seen, "bob", ["authenticated", "read"])
            bob = model._default_manager.get(**{model.USERNAME_FIELD: "bob"})
            assert reply.seen is not None and reply.seen.native["user"].pk == bob.pk
            bob.is_active = False
            bob.save()
            ticks.advance(1.01)  # the check's answer is reused for cache_ttl (1 s)
            refused = client.send("GET", "/rest/x", headers=headers)
            self.assert_refused(refused, 403, INSUFFICIENT_SCOPE)
            nobody = client.send(
                "GET", "/rest/x", headers=[*bearer(support.secret), ("X-Run-As", "ghost")]
            )
            self.assert_refused(nobody, 403, INSUFFICIENT_SCOPE)
            reasons = [event.reason for event in rows(tokens)]
            assert reasons[:2] == [
                "run-as user 'ghost' is unknown or inactive",
                "run-as user 'bob' is unknown or inactive",
            ]


class TestDjangoWSGI(DjangoContract):
    """``TokenMiddleware`` under Django's ``WSGIHandler``."""

    interface = "wsgi"
    # Django's WSGIRequest reads CONTENT_LENGTH bytes of wsgi.input and ignores
    # wsgi.input_terminated: a chunked body is b"" to TokenMiddleware and to the view
    # alike (the same bytes, so no gap; a JSON rule refuses it, fail closed).
    chunked_bodies = False

    def client_of(self, recorder: Recorder, mount: str) -> WSGIContractClient:
        return WSGIContractClient(wsgi_app(recorder), recorder, mount=mount)


class TestDjangoASGI(DjangoContract):
    """``TokenMiddleware`` under Django's ``ASGIHandler``.

    No lifespan and no websockets: Django's handler serves HTTP only (it raises on
    any other scope type; websockets are Channels' business).
    """

    interface = "asgi"

    def client_of(self, recorder: Recorder, mount: str) -> ASGIContractClient:
        return ASGIContractClient(ContractASGIHandler(recorder), recorder, mount=mount)

    def test_drf_parses_the_chunked_body_a_json_rule_read(
        self, client: DjangoClient, tokens: ApiTokens
    ) -> None:
        """DRF parses by CONTENT_LENGTH, which a chunked body lacks: ``request.data`` must
        still be the body the rule matched, not an empty one the rule never saw."""
        issued = tokens.create(
            actor="erin",
            name="data",
            scope=Scope.READ_WRITE,
            restrictions=["[post].*/rest/data[JsonData::project==ABC]"],
        )
        body = b'{"project": "ABC", "n": [1, 2]}'
        headers = [*bearer(issued.secret), ("Content-Type", JSON)]
        reply = client.send("POST", "/rest/data", headers=headers, body=[body[:7], body[7:]])
        assert reply.status == 200, reply.body
        assert reply.json() == {"data": {"project": "ABC", "n": [1, 2]}}
        assert reply.seen is not None and reply.seen.body == body
        assert client.recorder.messages >= 2  # it came in pieces, without Content-Length
