"""URLs: the notes API (DRF), the CSV export (a plain Django view), DRF's login pages."""

from __future__ import annotations

from django.urls import include, path
from notes import views
from rest_framework.routers import DefaultRouter

router = DefaultRouter()
router.register("notes", views.NoteViewSet, basename="note")

urlpatterns = [
    # Before the router's, which would take notes.csv for the list in a format "csv".
    path("api/notes.csv", views.export_csv),
    path("api/whoami/", views.WhoAmI.as_view()),
    path("api/", include(router.urls)),
    path("api-auth/", include("rest_framework.urls")),
]
