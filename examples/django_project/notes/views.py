"""The API: notes (a DRF viewset), who am I (a DRF view), the CSV export (plain Django)."""

from __future__ import annotations

import csv

from django.contrib.auth.decorators import login_required
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from rest_framework import serializers, viewsets
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apitokens.drf import HasToken
from notes.models import Note


class NoteSerializer(serializers.ModelSerializer):
    class Meta:
        model = Note
        fields = ("id", "text", "created")


class NoteViewSet(viewsets.ModelViewSet):
    """The signed-in user's notes: by a token (its owner) or by the browser's session.

    A read-only token lists and reads them; creating or deleting one needs a
    read-write token (the middleware answers 403 before the view runs).
    """

    serializer_class = NoteSerializer

    def get_queryset(self) -> QuerySet[Note]:
        return Note.objects.filter(owner=self.request.user.pk)

    def perform_create(self, serializer: NoteSerializer) -> None:
        serializer.save(owner=self.request.user)


class WhoAmI(APIView):
    """Only for a token (``HasToken``): the Django user and the token's id and scope."""

    permission_classes = (HasToken,)

    def get(self, request: Request) -> Response:
        token = request.auth.token
        return Response(
            {"user": request.user.get_username(), "token": token.id, "scope": str(token.scope)}
        )


@login_required
def export_csv(request: HttpRequest) -> HttpResponse:
    """A plain Django view: ``request.user`` is the token's owner, as for a session."""
    response = HttpResponse(content_type="text/csv")
    writer = csv.writer(response)
    writer.writerow(["id", "created", "text"])
    for note in Note.objects.filter(owner=request.user.pk):
        writer.writerow([note.id, note.created.isoformat(), note.text])
    return response
