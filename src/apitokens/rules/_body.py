"""The request body as JSON clauses read it: its media type, the JSON object, its values.

A body is read as JSON only when its ``Content-Type`` says it is JSON. A body can be
valid JSON and a valid form at once (``{"a":"&project=EVIL&z="}``); sent as a form, an
app reading ``request.form`` would act on values the rules never saw. Everything here
fails closed: a reason string instead of a value, never an exception.
"""

from __future__ import annotations

import json
import re
from typing import Final

__all__ = [
    "MISSING",
    "JsonNumber",
    "JsonObject",
    "json_media_type_problem",
    "load_json",
    "lookup",
    "value_texts",
]

JsonObject = dict[str, object]

# RFC 9110 media type: type "/" subtype, both tokens. Parameters after ";" are ignored.
_MEDIA_TYPE: Final = re.compile(r"([!#$%&'*+.^_`|~0-9A-Za-z-]+)/([!#$%&'*+.^_`|~0-9A-Za-z-]+)")
# A media type shown in a reason: short, and never holding a token string (they have "_").
_SHOWN_MEDIA_TYPE: Final = re.compile(r"[a-z0-9.+*-]{1,40}/[a-z0-9.+*-]{1,60}")

MISSING: Final = object()
"""What :func:`lookup` returns for a path the body does not have."""


JsonNumber = bytes
"""A JSON number: the text it was written with, encoded (``1.50`` is ``b"1.50"``).

Bytes, made by ``str.encode``: the parser calls it in C, with no Python frame per
number. A class of our own made a body of small numbers 15 times slower to read
(140 ms for 0.95 MB, against 9.5 ms), all of it holding the GIL. No other JSON
value is parsed to bytes, so a number is always told apart from a string.
"""


class _DuplicateKeyError(ValueError):
    pass


class _NonFiniteError(ValueError):
    pass


def json_media_type_problem(headers: object) -> str:
    """Why the request's ``Content-Type`` does not make its body JSON; ``""`` when it does.

    JSON is ``application/json`` or any ``type/name+json`` (RFC 6839), compared
    case-insensitively. The body is always read as UTF-8, so a ``charset`` parameter
    (any spelling: quoted, repeated, RFC 2231 ``charset*``) that is not ``utf-8`` makes
    it not JSON: Django REST framework decodes by it, and with ``utf-7`` a string the
    rule reads can hide a key the app reads. Other parameters are ignored. No
    ``Content-Type``, two of them, or one that is not a media type is not JSON.

    Args:
        headers: ``AuthRequest.headers``: ``(name, value)`` pairs, names lower-case.
    """
    values: list[object] = []
    try:
        for name, value in headers:  # type: ignore[attr-defined]
            if name == "content-type":
                values.append(value)
    except (TypeError, ValueError):
        return "body is not JSON (request headers cannot be read)"
    if not values:
        return "body is not JSON (no Content-Type header)"
    if len(values) > 1:
        # Servers and frameworks disagree on which one counts.
        return "body is not JSON (more than one Content-Type header)"
    value = values[0]
    found = (
        _MEDIA_TYPE.fullmatch(value.split(";", 1)[0].strip(" \t"))
        if isinstance(value, str)
        else None
    )
    if found is None:
        return "body is not JSON (malformed Content-Type)"
    kind, subtype = found[1].lower(), found[2].lower()
    media_type = f"{kind}/{subtype}"
    # "*" is a wildcard to some parsers (Django REST framework reads "*/x" as any type).
    if "*" not in media_type and (
        media_type == "application/json" or (len(subtype) > 5 and subtype.endswith("+json"))
    ):
        return _charset_problem(str(value))
    if _SHOWN_MEDIA_TYPE.fullmatch(media_type):
        return f"body is not JSON (Content-Type {media_type})"
    return "body is not JSON (Content-Type is not application/json or */*+json)"


def _charset_problem(value: str) -> str:
    """``""`` unless a parameter of the ``Content-Type`` ``value`` names a charset but UTF-8."""
    for parameter in value.split(";")[1:]:
        name, _, given = parameter.partition("=")
        named = name.strip(" \t").rstrip("*").lower() == "charset"
        if named and given.strip(" \t").strip('"').lower() not in ("utf-8", "utf8"):
            return "body is not JSON (a charset other than UTF-8)"
    return ""


def _unique_object(pairs: list[tuple[str, object]]) -> JsonObject:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _DuplicateKeyError
    return obj


def _non_finite(text: str) -> object:
    raise _NonFiniteError(text)


def load_json(body: object) -> JsonObject | str:
    """The body as a JSON object, or why it is not one.

    UTF-8 only (``json.loads`` of bytes would also guess UTF-16 and UTF-32, which no
    JSON body we allow could be read as: their ASCII characters hold NUL bytes, which
    a UTF-8 JSON text cannot contain); no duplicate keys, NaN or Infinity; numbers kept
    as their text.
    """
    if not isinstance(body, bytes | bytearray):
        return "request body is not bytes"
    if not body:
        return "JSON body is empty"
    try:
        value = json.loads(
            body.decode("utf-8"),
            object_pairs_hook=_unique_object,
            parse_int=str.encode,
            parse_float=str.encode,
            parse_constant=_non_finite,
        )
    except UnicodeError:
        return "JSON body is not valid UTF-8"
    except _DuplicateKeyError:
        return "JSON body has a duplicate key"
    except _NonFiniteError:
        return "JSON body contains NaN or Infinity"
    except RecursionError:
        return "JSON body is nested too deeply"
    except ValueError:
        return "JSON body is not valid JSON"
    if not isinstance(value, dict):
        return "JSON body is not an object"
    return value


def lookup(root: JsonObject, keys: tuple[tuple[str, int | None], ...]) -> object:
    """The value at a parsed JSON path, or MISSING."""
    value: object = root
    for key, index in keys:
        if isinstance(value, dict):
            if key not in value:
                return MISSING
            value = value[key]
        elif isinstance(value, list) and index is not None and index < len(value):
            value = value[index]
        else:
            return MISSING
    return value


def value_texts(value: object) -> list[str] | None:
    """The texts a JsonData regex must all match; None if an array (at any depth) is empty.

    Raises:
        RecursionError: an object inside the value is nested too deeply to format.
    """
    texts: list[str] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            if not item:
                return None
            stack.extend(reversed(item))
        elif isinstance(item, str):
            texts.append(item)
        else:
            texts.append(_compact(item))
    return texts


def _compact(value: object) -> str:
    """Compact JSON text with sorted keys; numbers keep the text they were written with."""
    if isinstance(value, JsonNumber):
        return value.decode()
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, dict):
        items = (f"{json.dumps(key)}:{_compact(value[key])}" for key in sorted(value))
        return "{" + ",".join(items) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_compact(item) for item in value) + "]"
    return "true" if value is True else "false" if value is False else "null"
