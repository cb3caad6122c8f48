"""Code snippets that call an API with a token: curl, Python (httpx), JavaScript (fetch)."""

from __future__ import annotations

import json
import shlex
from base64 import b64encode
from urllib.parse import urlsplit

__all__ = ["LANGUAGES", "render_snippet"]

LANGUAGES = ("curl", "python", "javascript")


def _check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"snippet url must be an http(s) URL, got {url!r}")
    if any(ch.isspace() or not ch.isprintable() for ch in url):
        raise ValueError("snippet url must not contain spaces or control characters")
    return url


def render_snippet(token: str, url: str, lang: str = "curl", *, user: str | None = None) -> str:
    """Return a snippet that calls ``url`` with ``token``.

    Args:
        token: the token string.
        url: the API URL to call.
        lang: ``"curl"``, ``"python"`` (httpx) or ``"javascript"`` (fetch).
        user: send Basic ``user:token`` instead of Bearer (unbound tokens,
            or a policy with Bearer turned off).

    Raises:
        ValueError: unknown language, or not an http(s) URL.
    """
    url = _check_url(url)
    if lang == "curl":
        if user is not None:
            return shlex.join(["curl", "-u", f"{user}:{token}", url])
        return shlex.join(["curl", "-H", f"Authorization: Bearer {token}", url])
    if lang == "python":
        auth = (
            f"auth=({json.dumps(user)}, {json.dumps(token)})"
            if user is not None
            else f'headers={{"Authorization": {json.dumps("Bearer " + token)}}}'
        )
        return (
            "import httpx\n\n"
            f"response = httpx.get({json.dumps(url)}, {auth})\n"
            "response.raise_for_status()\n"
            "print(response.json())\n"
        )
    if lang == "javascript":
        if user is not None:
            header = "Basic " + b64encode(f"{user}:{token}".encode()).decode()
        else:
            header = f"Bearer {token}"
        return (
            f"const response = await fetch({json.dumps(url)}, {{\n"
            f"  headers: {{ Authorization: {json.dumps(header)} }},\n"
            "});\n"
            "console.log(response.status, await response.json());\n"
        )
    raise ValueError(f"snippet language must be one of {', '.join(LANGUAGES)}, got {lang!r}")
