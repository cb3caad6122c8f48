"""The Django app of the adapter contract: its URLconf, its views, and the ApiTokens tests name.

``ROOT_URLCONF`` is this module while a contract client sends: the contract's routes
(``/rest/{anything}``, ``/public/{anything}``, and :data:`NEEDS_TOKEN` /
:data:`NEEDS_WRITE` as DRF views with apitokens' permission classes) in a Django
project that is otherwise ``tests/django_project`` (its settings, its middleware).
``settings.APITOKENS`` is the dotted path :func:`register` gives a test's
``ApiTokens`` (an attribute of this module), so ``get_tokens()`` resolves it as it
resolves a project's.
"""

from __future__ import annotations

import itertools
import sys
from typing import Any

from tests.support.django import setup

setup()  # Django's settings before DRF is imported, as any module a URLconf names

from django.http import HttpRequest, HttpResponse, JsonResponse  # noqa: E402
from django.urls import path  # noqa: E402
from django.views.decorators.csrf import csrf_exempt  # noqa: E402
from rest_framework.request import Request  # noqa: E402
from rest_framework.response import Response  # noqa: E402
from rest_framework.views import APIView  # noqa: E402

from apitokens import ApiTokens, AuthResult  # noqa: E402
from apitokens.drf import HasReadWriteToken, HasToken  # noqa: E402
from tests.adapters.harness import Recorder, Seen  # noqa: E402

RECORDER = "contract.recorder"
"""The ``request.META`` key of the client's :class:`Recorder` (set by the test's handler)."""

_numbers = itertools.count()


def register(tokens: ApiTokens) -> str:
    """Make ``tokens`` an attribute of this module; its dotted path, for ``APITOKENS``."""
    name = f"tokens_{next(_numbers)}"
    setattr(sys.modules[__name__], name, tokens)
    return f"{__name__}.{name}"


def unregister(dotted: str) -> None:
    """Forget what :func:`register` made (the test is over)."""
    delattr(sys.modules[__name__], dotted.rpartition(".")[2])


def seen(request: HttpRequest, body: bytes, read_before_app: int) -> Seen:
    """What a Django view sees: ``request.user`` (the Django user) and ``request.auth``."""
    user: Any = request.user
    auth = getattr(request, "auth", None)
    result = auth if isinstance(auth, AuthResult) else None
    return Seen(
        method=request.method or "",
        path=request.path_info,
        query=request.META.get("QUERY_STRING", ""),
        authorization=request.META.get("HTTP_AUTHORIZATION"),
        body=body,
        read_before_app=read_before_app,
        user=user.get_username() if user.is_authenticated else None,
        scopes=list(result.scopes) if result is not None else [],
        result=result,
        native={"user": user, "auth": auth, "REMOTE_USER": request.META.get("REMOTE_USER")},
    )


def _record(request: HttpRequest) -> None:
    recorder: Recorder = request.META[RECORDER]
    read_before_app = recorder.pulled
    body = request.body  # raw bytes: a form too is left unparsed
    recorder.seen.append(seen(request, body, read_before_app))


@csrf_exempt  # the contract's app has no session login: no CSRF token to ask for
def record(request: HttpRequest, rest: str) -> HttpResponse:
    """Any method: read the whole body and note what the view saw."""
    _record(request)
    return JsonResponse({"ok": True})


class NeedsToken(APIView):
    """A DRF view that needs a token (:class:`~apitokens.drf.HasToken`)."""

    permission_classes = (HasToken,)

    def get(self, request: Request) -> Response:
        _record(request._request)
        return Response({"ok": True})

    post = put = patch = delete = get


class NeedsWrite(NeedsToken):
    """A DRF view that needs a READ_WRITE token (:class:`~apitokens.drf.HasReadWriteToken`)."""

    permission_classes = (HasReadWriteToken,)


class Data(APIView):
    """A DRF view that answers what DRF parsed into ``request.data``."""

    permission_classes = (HasToken,)

    def post(self, request: Request) -> Response:
        _record(request._request)
        return Response({"data": request.data})


urlpatterns = [
    path("rest/data", Data.as_view()),
    path("rest/needs-token", NeedsToken.as_view()),
    path("rest/needs-write", NeedsWrite.as_view()),
    path("rest/<path:rest>", record),
    path("public/<path:rest>", record),
]
