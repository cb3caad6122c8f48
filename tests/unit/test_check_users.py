"""``ApiTokens.check_users``: a token of an unknown or inactive user is refused (DESIGN §9)."""

from __future__ import annotations

import asyncio
import json

from apitokens import Outcome
from apitokens.asgi import request_from_scope
from tests.support import Clock, Monotonic, bearer, get, last_event, make_tokens


def test_a_token_of_an_inactive_user_is_refused_and_audited() -> None:
    ticks = Monotonic()
    active = {"alice": True}
    asked: list[str] = []

    def is_active(user: str) -> bool:
        asked.append(user)
        return active.get(user, False)

    with make_tokens(clock=Clock(), monotonic=ticks) as tokens:
        tokens.check_users(is_active)
        issued = tokens.create(actor="alice", name="ci")
        assert tokens.authenticate(get("/x", bearer(issued.secret))).authenticated
        assert tokens.authenticate(get("/x", bearer(issued.secret))).authenticated
        assert asked == ["alice"]  # cached, as the groups are
        active["alice"] = False
        assert tokens.authenticate(get("/x", bearer(issued.secret))).authenticated  # cached
        ticks.advance(1.01)  # the default cache_ttl
        result = tokens.authenticate(get("/x", bearer(issued.secret)))
        assert (result.status_code, result.outcome) == (401, Outcome.FAILED)
        event = last_event(tokens)
        assert (event.outcome, event.user) == (Outcome.FAILED, "alice")
        assert event.reason == "user 'alice' is unknown or inactive"
        active["alice"] = True
        ticks.advance(1.01)
        assert tokens.authenticate(get("/x", bearer(issued.secret))).authenticated


def test_every_check_must_pass_and_the_same_check_counts_once() -> None:
    calls: list[str] = []

    def first(user: str) -> bool:
        calls.append("first")
        return True

    def second(user: str) -> bool:
        calls.append("second")
        return user != "bob"

    with make_tokens(clock=Clock(), monotonic=Monotonic()) as tokens:
        tokens.check_users(first)
        tokens.check_users(first)
        tokens.check_users(second)
        alice = tokens.create(actor="alice", name="a")
        bob = tokens.create(actor="bob", name="b")
        assert tokens.authenticate(get("/x", bearer(alice.secret))).authenticated
        assert calls == ["first", "second"]
        assert tokens.authenticate(get("/x", bearer(bob.secret))).status_code == 401


def test_a_failing_check_is_503_never_a_pass() -> None:
    def broken(user: str) -> bool:
        raise RuntimeError("directory down")

    with make_tokens(clock=Clock(), monotonic=Monotonic()) as tokens:
        issued = tokens.create(actor="alice", name="ci")
        assert tokens.authenticate(get("/x", bearer(issued.secret))).authenticated
        tokens.check_users(broken)  # added later: the hot path must not skip it
        result = tokens.authenticate(get("/x", bearer(issued.secret)))
        assert (result.status_code, result.outcome) == (503, Outcome.FAILED)
        assert json.loads(result.body)["error"] == "temporarily_unavailable"


def test_the_async_flow_runs_an_uncached_check_off_the_loop() -> None:
    loop_threads: list[bool] = []

    def is_active(user: str) -> bool:
        try:
            asyncio.get_running_loop()
            loop_threads.append(True)
        except RuntimeError:
            loop_threads.append(False)
        return True

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/x",
        "raw_path": b"/x",
        "query_string": b"",
        "headers": [],
        "client": ("192.0.2.1", 5000),
    }
    with make_tokens(clock=Clock(), monotonic=Monotonic()) as tokens:
        issued = tokens.create(actor="alice", name="ci")
        tokens.check_users(is_active)
        scope["headers"] = [(b"authorization", f"Bearer {issued.secret}".encode())]
        result = asyncio.run(tokens.flow.run_async(request_from_scope(scope)))
        assert result.authenticated
        assert loop_threads == [False]
