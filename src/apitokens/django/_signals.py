"""A token names its owner by ``USERNAME_FIELD``: when that user goes, their tokens go.

Deleting a Django user, or changing its username, revokes the tokens of the old name
(after the transaction commits, as the owner, so each revocation is audited), so a
token never serves whoever gets the name next.
"""

from __future__ import annotations

import logging
from typing import Any

from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models.signals import post_delete, pre_save

from apitokens.django._project import get_tokens

__all__ = ["connect"]

log = logging.getLogger("apitokens")


def connect() -> None:
    """Connect the receivers to the project's user model (``AppConfig.ready``)."""
    model = get_user_model()
    post_delete.connect(_deleted, sender=model, dispatch_uid="apitokens-user-deleted")
    pre_save.connect(_renamed, sender=model, dispatch_uid="apitokens-user-renamed")


def _deleted(sender: Any, instance: Any, **kwargs: Any) -> None:
    name = instance.get_username()
    transaction.on_commit(lambda: revoke_all(name), using=kwargs.get("using"))


def _renamed(sender: Any, instance: Any, **kwargs: Any) -> None:
    field = str(sender.USERNAME_FIELD)
    fields = kwargs.get("update_fields")
    if instance.pk is None or kwargs.get("raw") or (fields is not None and field not in fields):
        return  # a new user, a fixture, or a save of other fields (last_login at each login)
    old = (
        sender._default_manager.using(kwargs.get("using"))
        .filter(pk=instance.pk)
        .values_list(field, flat=True)
        .first()
    )
    if old is not None and old != instance.get_username():
        transaction.on_commit(lambda: revoke_all(str(old)), using=kwargs.get("using"))


def revoke_all(username: str) -> int:
    """Revoke every active token of ``username``, as its owner; how many were revoked."""
    try:
        tokens = get_tokens()
        revoked = 0
        for token in tokens.list(actor=username, user=username, status="active"):
            tokens.revoke(actor=username, token_id=token.id)
            revoked += 1
    except Exception:
        # The user is gone either way; their tokens are refused while no user has the
        # name (unknown users get 401). Said loudly: the name must not be reused first.
        log.exception("apitokens: could not revoke the tokens of deleted or renamed user %r",
                      username)  # fmt: skip
        return 0
    return revoked
