"""DRF views of the test project for ``tests/django_tests/test_drf.py`` (included by urls.py).

Under ``/api/drf/`` (a protected path) and ``/drf/`` (outside the policy's
protected paths, where only a DRF class that asks for a token checks one).
"""

from __future__ import annotations

from typing import Any

from django.urls import path
from rest_framework.authentication import BaseAuthentication, SessionAuthentication
from rest_framework.permissions import BasePermission, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import APIView

from apitokens.drf import HasToken, TokenAuthentication
from tests.django_project.views import _who


class FromSettings(APIView):
    """Authentication and permission classes read from ``REST_FRAMEWORK`` at each request.

    ``APIView`` binds the ``DEFAULT_*`` classes when DRF is imported, so a test's
    ``override_settings(REST_FRAMEWORK=...)`` reaches only a view that reads them late.
    """

    def get_authenticators(self) -> list[BaseAuthentication]:
        return [cls() for cls in api_settings.DEFAULT_AUTHENTICATION_CLASSES]

    def get_permissions(self) -> list[BasePermission]:
        return [cls() for cls in api_settings.DEFAULT_PERMISSION_CLASSES]

    def get(self, request: Request) -> Response:
        return Response(_who(request.user, request.auth))

    def post(self, request: Request) -> Response:
        return Response({**_who(request.user, request.auth), "data": request.data})


class TokenOnly(APIView):
    """Per view: apitokens' authentication alone, whatever the project's default."""

    authentication_classes = (TokenAuthentication,)
    permission_classes = (IsAuthenticated,)

    def get(self, request: Request) -> Response:
        return Response(_who(request.user, request.auth))

    def post(self, request: Request) -> Response:
        return Response({**_who(request.user, request.auth), "data": request.data})


class SessionOnly(APIView):
    """Per view: Django's session alone (DRF enforces CSRF on it)."""

    authentication_classes = (SessionAuthentication,)
    permission_classes = (IsAuthenticated,)

    def post(self, request: Request) -> Response:
        return Response(_who(request.user, request.auth))


class Upload(APIView):
    """Form-encoded and multipart bodies: the fields and the files' contents DRF parsed."""

    permission_classes = (IsAuthenticated,)

    def post(self, request: Request) -> Response:
        files = {name: upload.read().decode() for name, upload in request.FILES.items()}
        fields = {name: request.data[name] for name in request.data if name not in files}
        return Response({**_who(request.user, request.auth), "fields": fields, "files": files})


class TokenRequired(APIView):
    """``HasToken`` (the project's default authentication classes)."""

    permission_classes = (HasToken,)

    def get(self, request: Request) -> Response:
        return Response(_who(request.user, request.auth))

    def post(self, request: Request) -> Response:
        return Response({**_who(request.user, request.auth), "data": request.data})


def _views(prefix: str) -> list[Any]:
    return [
        path(f"{prefix}from-settings", FromSettings.as_view()),
        path(f"{prefix}token-only", TokenOnly.as_view()),
        path(f"{prefix}session-only", SessionOnly.as_view()),
        path(f"{prefix}upload", Upload.as_view()),
        path(f"{prefix}needs-token", TokenRequired.as_view()),
    ]


urlpatterns = _views("api/drf/") + _views("drf/")


class TokenRequiredSessionAuth(TokenRequired):
    """``HasToken`` on a view whose only authentication class is the session's."""

    authentication_classes = (SessionAuthentication,)


urlpatterns += [
    path("api/drf/needs-token-session-auth", TokenRequiredSessionAuth.as_view()),
    path("drf/needs-token-session-auth", TokenRequiredSessionAuth.as_view()),
]
