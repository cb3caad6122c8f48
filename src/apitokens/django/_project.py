"""The project's ``ApiTokens`` (``settings.APITOKENS``) and its Django users."""

from __future__ import annotations

import threading
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.utils.module_loading import import_string

from apitokens._api import ApiTokens

__all__ = ["django_user", "get_tokens", "is_active_user"]

_lock = threading.Lock()
_resolved: dict[str, ApiTokens] = {}


def get_tokens() -> ApiTokens:
    """The ``ApiTokens`` that ``settings.APITOKENS`` names (a dotted path), resolved once.

    Resolving it adds the Django user check (:meth:`ApiTokens.check_users`): a
    token authenticates only while its owner is an active Django user.

    Raises:
        ImproperlyConfigured: the setting is missing, cannot be imported, or
            does not name an ``ApiTokens``.
    """
    path = getattr(settings, "APITOKENS", None)
    if not isinstance(path, str) or not path:
        raise ImproperlyConfigured(
            "apitokens: set APITOKENS to the dotted path of your ApiTokens instance"
            " (e.g. APITOKENS = 'myproject.auth.tokens')"
        )
    found = _resolved.get(path)
    if found is not None:
        return found
    with _lock:
        found = _resolved.get(path)
        if found is None:
            try:
                found = import_string(path)
            except ImportError as exc:
                raise ImproperlyConfigured(f"apitokens: APITOKENS = {path!r}: {exc}") from exc
            if not isinstance(found, ApiTokens):
                raise ImproperlyConfigured(
                    f"apitokens: APITOKENS = {path!r} names a {type(found).__name__},"
                    " not an ApiTokens"
                )
            found.check_users(is_active_user)
            _resolved[path] = found
    return found


def is_active_user(username: str) -> bool:
    """Whether ``username`` is a Django user (``USERNAME_FIELD``) who is active."""
    user = django_user(username)
    return user is not None and bool(getattr(user, "is_active", True))


def django_user(username: str) -> Any:
    """The Django user whose ``USERNAME_FIELD`` is ``username``, or ``None``."""
    model = get_user_model()
    try:
        field = str(model.USERNAME_FIELD)
        return model._default_manager.get(**{field: username})
    except model.DoesNotExist:
        return None


def _forget(*, setting: str, **_: Any) -> None:
    # override_settings(APITOKENS=...) in a project's tests resolves the new one.
    if setting == "APITOKENS":
        with _lock:
            _resolved.clear()


setting_changed.connect(_forget)
