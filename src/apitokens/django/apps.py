"""The Django app of apitokens: in ``INSTALLED_APPS`` for ``manage.py apitokens``."""

from __future__ import annotations

from django.apps import AppConfig


class ApiTokensConfig(AppConfig):
    """``apitokens.django``: no models, no migrations; the management command, the checks."""

    name = "apitokens.django"
    label = "apitokens"
    verbose_name = "API tokens"

    def ready(self) -> None:
        """Register the system checks; revoke a deleted or renamed user's tokens."""
        from apitokens.django import _signals, checks  # noqa: F401  (checks: on import)

        _signals.connect()
