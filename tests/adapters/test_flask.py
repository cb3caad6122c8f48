"""The adapter contract for Flask behind ``app.wsgi_app = tokens.wsgi(app.wsgi_app)``."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask, jsonify, request

from apitokens import ApiTokens
from tests.adapters.contract import AdapterContract, Build
from tests.adapters.harness import Recorder, WSGIContractClient, seen_from_environ

METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def flask_app(tokens: ApiTokens, recorder: Recorder) -> Flask:
    app = Flask(__name__)

    def record(rest: str) -> Any:
        read_before_app = recorder.pulled
        body = request.get_data()  # raw bytes: a form too is left unparsed
        recorder.seen.append(seen_from_environ(request.environ, body, read_before_app))
        return jsonify(ok=True)

    app.add_url_rule("/rest/<path:rest>", "rest", record, methods=METHODS)
    app.add_url_rule("/public/<path:rest>", "public", record, methods=METHODS)
    app.wsgi_app = tokens.wsgi(app.wsgi_app)  # type: ignore[method-assign]
    return app


class TestFlask(AdapterContract):
    interface = "wsgi"

    @pytest.fixture
    def build(self) -> Build:
        def build(tokens: ApiTokens, *, mount: str = "") -> WSGIContractClient:
            recorder = Recorder()
            return WSGIContractClient(flask_app(tokens, recorder), recorder, mount=mount)

        return build
