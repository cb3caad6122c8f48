"""The Django app of apitokens: in ``INSTALLED_APPS`` for ``manage.py apitokens``."""

from __future__ import annotations

from django.apps import AppConfig


class ApiTokensConfig(AppConfig):
    """``apitokens.django``: no models, no migrations; the management command."""

    name = "apitokens.django"
    label = "apitokens"
    verbose_name = "API tokens"
