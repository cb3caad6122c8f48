"""The test project beside the peers: django-rest-knox and djangorestframework-api-key.

Its own URLconf, used only under the peers' settings (``test_drf.py``: ``knox`` and
``rest_framework_api_key`` added to ``INSTALLED_APPS``, ``ROOT_URLCONF`` this
module): their models can be imported only while their apps are installed.
The switch from a peer to apitokens, both accepted at once (docs/django.md).
"""

from __future__ import annotations

from typing import Any

from django.urls import path
from knox.auth import TokenAuthentication as KnoxAuthentication
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework_api_key.permissions import HasAPIKey

from apitokens.drf import HasToken, TokenAuthentication
from tests.django_project.drf_views import FromSettings
from tests.django_project.views import _who


def _seen(request: Request) -> dict[str, Any]:
    authenticator = request.successful_authenticator
    by = type(authenticator).__module__ if authenticator is not None else None
    return {**_who(request.user, request.auth), "by": by}


class Switching(FromSettings):
    """``DEFAULT_AUTHENTICATION_CLASSES`` and ``DEFAULT_PERMISSION_CLASSES`` as set now."""

    def get(self, request: Request) -> Response:
        return Response(_seen(request))


class KnoxOrToken(APIView):
    """Per view: apitokens first, knox's tokens still accepted."""

    authentication_classes = (TokenAuthentication, KnoxAuthentication)
    permission_classes = (IsAuthenticated,)

    def get(self, request: Request) -> Response:
        return Response(_seen(request))


class ApiKeyOrToken(APIView):
    """drf-api-key's permission or a token: ``HasAPIKey | HasToken`` (HasToken last)."""

    authentication_classes = (TokenAuthentication,)
    permission_classes = (HasAPIKey | HasToken,)

    def get(self, request: Request) -> Response:
        return Response(_seen(request))


urlpatterns = [
    path("api/switching", Switching.as_view()),
    path("api/knox-or-token", KnoxOrToken.as_view()),
    path("api/api-key-or-token", ApiKeyOrToken.as_view()),
]
