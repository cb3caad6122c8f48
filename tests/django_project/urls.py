"""URLs of the test project."""

from __future__ import annotations

from django.urls import include, path

from tests.django_project import views

urlpatterns = [
    path("plain/whoami", views.plain),
    path("session/whoami", views.session),
    path("api/whoami", views.WhoAmI.as_view()),
    path("api/echo", views.Echo.as_view()),
    path("api/needs-token", views.NeedsToken.as_view()),
    path("api/needs-write", views.NeedsWrite.as_view()),
    path("", include("tests.django_project.drf_views")),
]
