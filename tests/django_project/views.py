"""Views of the test project: plain Django, session-only, and DRF."""

from __future__ import annotations

import json
from typing import Any

from django.http import HttpRequest, JsonResponse
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apitokens import AuthResult
from apitokens.drf import HasReadWriteToken, HasToken


def _who(user: Any, auth: Any) -> dict[str, Any]:
    token = auth.token if isinstance(auth, AuthResult) else None
    return {
        "user": user.get_username() if user.is_authenticated else None,
        "user_class": user.__class__.__name__,  # through SimpleLazyObject
        "token": token.id if token else None,
        "scope": str(token.scope) if token else None,
    }


def plain(request: HttpRequest) -> JsonResponse:
    """A plain Django view (GET or POST), under the middleware and CSRF."""
    seen = _who(request.user, getattr(request, "auth", None))
    seen["method"] = request.method
    seen["body"] = request.body.decode("utf-8", "replace")
    return JsonResponse(seen)


def session(request: HttpRequest) -> JsonResponse:
    """Outside the protected paths: Django's session login only."""
    seen = _who(request.user, getattr(request, "auth", None))
    seen["method"] = request.method
    return JsonResponse(seen)


class WhoAmI(APIView):
    """A DRF view for any authenticated user (token or session)."""

    permission_classes = (IsAuthenticated,)

    def get(self, request: Request) -> Response:
        return Response(_who(request.user, request.auth))

    def post(self, request: Request) -> Response:
        return Response({**_who(request.user, request.auth), "data": request.data})


class Echo(APIView):
    """Echoes ``request.data``: what DRF parsed from the body a JSON rule read."""

    permission_classes = (HasToken,)

    def post(self, request: Request) -> Response:
        return Response({"data": request.data, "raw": json.loads(request.body or b"null")})


class NeedsToken(APIView):
    permission_classes = (HasToken,)

    def get(self, request: Request) -> Response:
        return Response(_who(request.user, request.auth))


class NeedsWrite(APIView):
    permission_classes = (HasReadWriteToken,)

    def get(self, request: Request) -> Response:
        return Response(_who(request.user, request.auth))

    def post(self, request: Request) -> Response:
        return Response(_who(request.user, request.auth))
