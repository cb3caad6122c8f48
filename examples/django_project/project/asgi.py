"""The ASGI application: ``uvicorn project.asgi:application``.

TokenMiddleware works the same under ASGI (Django runs it in its thread for
synchronous code). Never add Django's RemoteUserMiddleware here: see docs/django.md.
"""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

application = get_asgi_application()
