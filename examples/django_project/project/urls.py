"""URLs: the notes API (DRF), the CSV export (a plain Django view), DRF's login pages."""

from __future__ import annotations

from django.urls import include, path
from notes import views
from rest_framework.routers import DefaultRouter

router = DefaultRouter()
router.register("notes", views.NoteViewSet, basename="note")

urlpatterns = [
    path("api/", include(router.urls)),
    path("api/whoami/", views.WhoAmI.as_view()),
    path("api/notes.csv", views.export_csv),
    path("api-auth/", include("rest_framework.urls")),
]
