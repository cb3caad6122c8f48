"""``apitokens rule check``: test a restriction rule against a request, offline.

No database is opened: the command only parses the rule and matches it, so a
user can try a rule before any token carries it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TypeVar

from ._cli_output import clean, width
from ._errors import RuleSyntaxError
from ._request import AuthRequest
from .rules import RestrictionRule

__all__ = ["EXIT_MATCH", "EXIT_NO_MATCH", "add_rule_parser", "caret_lines", "rule_check"]

_P = TypeVar("_P", bound=argparse.ArgumentParser)

EXIT_MATCH = 0
EXIT_NO_MATCH = 1
EXIT_USAGE = 2


def caret_lines(rule: str, column: int) -> list[str]:
    """The rule (escaped where unsafe) and a caret under ``column`` (1-based)."""
    pieces = [clean(char) for char in rule]
    before = pieces[: max(column - 1, 0)]
    return ["  " + "".join(pieces), "  " + " " * sum(width(piece) for piece in before) + "^"]


def _read_body(text: str | None) -> bytes:
    """The ``--json`` body: the text itself, ``@FILE`` for a file, ``@-`` for stdin."""
    if text is None:
        return b""
    if text == "@-":
        return sys.stdin.buffer.read()
    if text.startswith("@"):
        try:
            return Path(text[1:]).read_bytes()
        except OSError as exc:
            raise ValueError(f"--json {clean(text)}: {exc.strerror or exc}") from None
    return text.encode("utf-8", "surrogateescape")


def rule_check(args: argparse.Namespace) -> int:
    """Run ``rule check``; exit 0 on a match, 1 on no match, 2 on a syntax error."""
    text: str = args.rule
    method: str = args.method
    path: str = args.path
    query: str | None = args.query
    if query is None:
        path, _, query = path.partition("?")
    body = _read_body(args.body)
    try:
        rule = RestrictionRule.parse(text)
    except RuleSyntaxError as exc:
        lines = caret_lines(text, exc.column)
        lines.append(f"apitokens: error: invalid rule: column {exc.column}: {clean(exc.reason)}")
        print("\n".join(lines), file=sys.stderr)
        return EXIT_USAGE
    # The body is JSON, as --json says: JsonData clauses read only a JSON Content-Type.
    headers = [("content-type", "application/json")]
    result = rule.explain(AuthRequest(method, path, query=query, headers=headers, body=body))
    shown = clean(method.upper()) + " " + clean(path) + (f"?{clean(query)}" if query else "")
    lines = [f"rule:     {clean(rule)}", f"request:  {shown}"]
    if body:
        lines.append(f"body:     {clean(body.decode('utf-8', 'replace'))}")
    if result.matched:
        lines.append("result:   match (the rule allows this request)")
    else:
        lines.append(f"result:   no match: {clean(result.reason)}")
    print("\n".join(lines))
    return EXIT_MATCH if result.matched else EXIT_NO_MATCH


def add_rule_parser(commands: argparse._SubParsersAction[_P]) -> None:
    """Add ``rule check`` to the command's subcommands."""
    rule = commands.add_parser(
        "rule",
        help="test restriction rules",
        description="Test restriction rules without a database.",
    )
    actions = rule.add_subparsers(title="commands", metavar="COMMAND", required=True)
    check = actions.add_parser(
        "check",
        help="tell whether a request matches a rule, and if not, which part failed",
        description=(
            "Tell whether a request matches a restriction rule and, when it does not, "
            "which part failed. Exit status: 0 match, 1 no match, 2 the rule does not parse."
        ),
    )
    check.add_argument("rule", metavar="RULE", help="one rule, e.g. '[GET].*/rest/api/2/.*'")
    check.add_argument("method", metavar="METHOD", help="the request's HTTP method, e.g. GET")
    check.add_argument(
        "path",
        metavar="PATH",
        help="the request path as sent (percent-encoded); a '?query' part is split off",
    )
    check.add_argument("--query", metavar="Q", help="the raw query string, without '?'")
    check.add_argument(
        "--json",
        dest="body",
        metavar="BODY",
        help="the JSON request body; @FILE reads it from a file, @- from stdin",
    )
    check.set_defaults(offline=rule_check)
