"""The rule tester's JSON endpoint: the same answers as ``apitokens rule check``."""

from __future__ import annotations

import json
import re

import pytest

from apitokens.cli import main
from tests.web.conftest import Pages

CASES = [
    ("[GET].*/rest/api/2/search.*", "GET", "/rest/api/2/search?jql=x", ""),
    ("[GET].*/rest/api/2/search.*", "POST", "/rest/api/2/search", ""),
    (".*/rest/api/2/issue/OPS-.*", "GET", "/rest/api/2/issue/DEV-1", ""),
    (".*/rest/.*[QueryParam::jql==project=OPS]", "GET", "/rest/search?jql=project=DEV", ""),
    (".*/rest/.*[QueryParam::jql==project=OPS]", "GET", "/rest/search?jql=project=OPS", ""),
    (
        ".*/rest/api/2/filter[JsonData::editable==false]",
        "POST",
        "/rest/api/2/filter",
        '{"editable": false}',
    ),
    (
        ".*/rest/api/2/filter[JsonData::editable==false]",
        "POST",
        "/rest/api/2/filter",
        '{"editable": true}',
    ),
    ("[GET].*/rest/%2e%2e/admin", "GET", "/rest/%2e%2e/admin", ""),
    ("[GET", "GET", "/", ""),
    ("[GET].*/rest/(", "GET", "/rest/", ""),
]


def cli(rule: str, method: str, path: str, body: str, capsys: pytest.CaptureFixture[str]) -> dict:
    argv = ["rule", "check", rule, method, path] + (["--json", body] if body else [])
    status = main(argv)
    out, err = capsys.readouterr()
    if status == 2:
        column = re.search(r"column (\d+): (.*)", err)
        assert column, err
        return {"matched": False, "column": int(column.group(1)), "reason": column.group(2)}
    result = re.search(r"result:   (match|no match: (.*))", out)
    assert result, out
    return {"matched": status == 0, "column": None, "reason": result.group(2) or ""}


@pytest.mark.parametrize(("rule", "method", "path", "body"), CASES)
def test_the_endpoint_agrees_with_the_command(
    pages: Pages,
    capsys: pytest.CaptureFixture[str],
    rule: str,
    method: str,
    path: str,
    body: str,
) -> None:
    expected = cli(rule, method, path, body, capsys)
    response = pages.post(
        "/rules/check",
        json={"rules": rule, "method": method, "path": path, "body": body},
        headers={"x-csrf-token": pages.csrf()},
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    answer = response.json()
    [verdict] = answer["rules"]
    assert verdict["matched"] == expected["matched"]
    assert verdict["column"] == expected["column"]
    if expected["column"] is None:
        assert verdict["reason"] == expected["reason"]
    else:
        assert verdict["reason"].endswith(expected["reason"])
    assert answer["allowed"] == expected["matched"]


def test_several_rules_and_the_scope(pages: Pages) -> None:
    csrf = {"x-csrf-token": pages.csrf()}
    rules = "[GET].*/a/.*\n\n  [POST].*/b/.*  \n"
    answer = pages.post(
        "/rules/check", json={"rules": rules, "method": "POST", "path": "/b/1"}, headers=csrf
    ).json()
    assert answer["allowed"] is True
    assert answer["summary"] == "Allowed by the rule [POST].*/b/.*"
    assert [v["matched"] for v in answer["rules"]] == [False, True]
    scoped = pages.post(
        "/rules/check",
        json={"rules": rules, "method": "POST", "path": "/b/1", "scope": "read_only"},
        headers=csrf,
    ).json()
    assert scoped["allowed"] is False
    assert scoped["summary"] == "Refused: the read-only scope does not allow POST"
    none = pages.post("/rules/check", json={"path": "/x"}, headers=csrf).json()
    assert none["allowed"] is True and none["rules"] == []


def test_the_endpoint_needs_the_csrf_token_and_a_json_object(pages: Pages) -> None:
    body = {"rules": ".*", "path": "/"}
    assert pages.post("/rules/check", json=body).status_code == 403
    assert pages.post("/rules/check", json=body, headers={"x-csrf-token": "x"}).status_code == 403
    denied = pages.post("/rules/check", json=body, user=None)
    assert denied.status_code == 401
    assert denied.headers["content-type"] == "application/json"
    csrf = {"x-csrf-token": pages.csrf()}
    for bad in ([1, 2], {"rules": 1}):
        response = pages.post(
            "/rules/check",
            content=json.dumps(bad),
            headers={**csrf, "content-type": "application/json"},
        )
        assert response.status_code == 400
    assert pages.post("/rules/check", content=b"{", headers=csrf).status_code == 400
