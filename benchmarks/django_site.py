"""The URLs and views the Django benchmark serves (its ``ROOT_URLCONF``).

One plain Django view and one DRF view. The DRF view is mounted once per way of
checking a credential (none, apitokens, drf-api-key, knox), so every case runs the
same view code and differs from the bare one only by its authentication and
permission classes. ``settings.APITOKENS`` names ``tokens`` below, which the
benchmark sets before the first request. Import it only once Django is set up
(``benchmarks.bench_django`` configures the settings).
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse
from django.urls import path
from knox.auth import (  # type: ignore[import-untyped,unused-ignore]
    TokenAuthentication as KnoxAuthentication,
)
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework_api_key.permissions import HasAPIKey

from apitokens import ApiTokens
from apitokens.drf import HasToken, TokenAuthentication

tokens: ApiTokens | None = None  # settings.APITOKENS; set by the benchmark

BODY = b'{"ok":true}'


def plain(request: HttpRequest) -> HttpResponse:
    """The plain Django view."""
    return HttpResponse(BODY, content_type="application/json")


class Item(APIView):
    """The DRF view (JSON renderer only)."""

    def get(self, request: Request) -> Response:
        return Response({"ok": True})


def drf(*authentication: type, permission: type | None = None) -> Any:
    """The DRF view with these authentication classes and this one permission class."""
    kwargs: dict[str, Any] = {"authentication_classes": authentication}
    if permission is not None:
        kwargs["permission_classes"] = (permission,)
    return Item.as_view(**kwargs)


urlpatterns = [
    path("plain/item", plain),
    path("api/bare", drf()),
    path("api/tokens/item", drf(TokenAuthentication, permission=HasToken)),
    path("api/tokens/any", drf(TokenAuthentication)),  # AllowAny: the policy protects it
    path("api/tokens/user", drf(TokenAuthentication, permission=IsAuthenticated)),
    path("api/apikey", drf(permission=HasAPIKey)),
    path("api/knox", drf(KnoxAuthentication, permission=IsAuthenticated)),
]
