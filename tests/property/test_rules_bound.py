"""The step bound of ``_rules_bound`` holds for a backtracking matcher that counts steps.

Patterns are generated in the form the bound covers, as a small syntax tree rendered
to regex source. A naive matcher walks the tree with no optimisation at all: it tries
every continuation of every choice, even after a match, and counts a step per item it
enters, per character it reads and per end-of-text check. Its verdict must agree with
``regex.fullmatch`` (so it matches what the pattern means), and its count must stay
within ``work(source)(len(text))``. The regex module is a backtracking matcher that
explores no more than this one; what a step costs it is measured in
``benchmarks/findings.md``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Union

import pytest
import regex
from hypothesis import given
from hypothesis import strategies as st

from apitokens.rules._bound import (
    MAX_TEXT,
    STEP_LIMIT,
    UNBOUNDED,
    max_unclocked_length,
    work,
)

# Characters of the texts: letters, digits, separators, a non-ASCII letter, an
# Arabic-Indic digit (\d and \w match it), a non-ASCII space (\s matches it).
ALPHABET = "ab/-1 \u00e9\u0663\u2028"
CLASSES = [".", "[ab]", "[^a]", "[a-z]", "[^/]", "[-a]", "[/-]", "\\d", "\\D", "\\w", "\\W", "\\s"]
LITERALS = ["a", "a", "a", "b", "/", "/", "-", "1", "\\-", "\\/", "\u00e9"]
REPEATS = ["", "*", "+", "?", "{2}", "{1,3}", "{2,}", "{,2}", "*?", "+?", "??", "{0,2}?"]
ANCHORS = ["^", "$", "\\b", "\\B"]


@dataclass(frozen=True)
class Atom:
    source: str  # one character: a literal or a class
    lo: int
    hi: int | None


@dataclass(frozen=True)
class Anchor:
    source: str


@dataclass(frozen=True)
class Group:
    alternatives: tuple[tuple[Node, ...], ...]
    optional: bool
    capturing: bool


Node = Union[Atom, Anchor, Group]  # noqa: UP007 - a runtime alias, not an annotation


def _bounds(repeat: str) -> tuple[int, int | None]:
    core = repeat.rstrip("?") if repeat not in ("?", "??") else "?"
    return {
        "": (1, 1),
        "*": (0, None),
        "+": (1, None),
        "?": (0, 1),
        "{2}": (2, 2),
        "{1,3}": (1, 3),
        "{2,}": (2, None),
        "{,2}": (0, 2),
        "{0,2}": (0, 2),
    }[core]


@st.composite
def atoms(draw: st.DrawFn) -> tuple[str, Atom]:
    char = draw(st.sampled_from(LITERALS + CLASSES))
    repeat = draw(st.sampled_from(REPEATS))
    lo, hi = _bounds(repeat)
    return char + repeat, Atom(char, lo, hi)


def anchors() -> st.SearchStrategy[tuple[str, Anchor]]:
    return st.sampled_from(ANCHORS).map(lambda source: (source, Anchor(source)))


def sequences(
    item: st.SearchStrategy[tuple[str, Node]],
) -> st.SearchStrategy[tuple[str, tuple[Node, ...]]]:
    return st.lists(item, max_size=4).map(
        lambda items: ("".join(source for source, _ in items), tuple(node for _, node in items))
    )


@st.composite
def groups(draw: st.DrawFn, item: st.SearchStrategy[tuple[str, Node]]) -> tuple[str, Group]:
    alternatives = draw(st.lists(sequences(item), min_size=1, max_size=3))
    optional = draw(st.booleans())
    capturing = draw(st.booleans())
    body = "|".join(source for source, _ in alternatives)
    source = ("(" if capturing else "(?:") + body + ")" + ("?" if optional else "")
    return source, Group(tuple(nodes for _, nodes in alternatives), optional, capturing)


def items() -> st.SearchStrategy[tuple[str, Node]]:
    leaf = st.one_of(atoms(), atoms(), anchors())
    return st.recursive(leaf, lambda inner: groups(inner), max_leaves=6)


def patterns() -> st.SearchStrategy[tuple[str, Group]]:
    """A pattern in the form: top-level alternatives of items, as one group."""
    return st.lists(sequences(items()), min_size=1, max_size=3).map(
        lambda alternatives: (
            "|".join(source for source, _ in alternatives),
            Group(tuple(nodes for _, nodes in alternatives), optional=False, capturing=False),
        )
    )


class NaiveMatcher:
    """Exhaustive backtracking over the tree, counting steps."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.steps = 0

    def fullmatch(self, whole: Group) -> bool:
        matched = False
        for end in self._node(whole, 0):
            self.steps += 1  # the end-of-text check
            matched = matched or end == len(self.text)
        return matched

    def _sequence(self, nodes: tuple[Node, ...], pos: int) -> Iterator[int]:
        if not nodes:
            yield pos
            return
        for middle in self._node(nodes[0], pos):
            yield from self._sequence(nodes[1:], middle)

    def _node(self, node: Node, pos: int) -> Iterator[int]:
        self.steps += 1  # entering it
        if isinstance(node, Atom):
            count = 0
            while (node.hi is None or count < node.hi) and pos + count < len(self.text):
                self.steps += 1  # reading a character
                if regex.fullmatch(node.source, self.text[pos + count]) is None:
                    break
                count += 1
            for taken in range(count, node.lo - 1, -1):
                yield pos + taken
        elif isinstance(node, Anchor):
            self.steps += 2  # the characters on either side
            if self._holds(node.source, pos):
                yield pos
        else:
            for alternative in node.alternatives:
                yield from self._sequence(alternative, pos)
            if node.optional:
                yield pos

    def _holds(self, anchor: str, pos: int) -> bool:
        text = self.text
        if anchor == "^":
            return pos == 0
        if anchor == "$":
            return pos == len(text) or (pos == len(text) - 1 and text[-1] == "\n")
        before = pos > 0 and regex.fullmatch(r"\w", text[pos - 1]) is not None
        after = pos < len(text) and regex.fullmatch(r"\w", text[pos]) is not None
        return (before != after) == (anchor == "\\b")


def texts() -> st.SearchStrategy[str]:
    """Any text, or one of few characters: the texts that make backtracking go far."""
    few = st.sampled_from(["a", "ab", "a/", "a1", "-a"]).flatmap(
        lambda chars: st.text(alphabet=chars, max_size=10)
    )
    return st.one_of(st.text(alphabet=ALPHABET, max_size=9), few)


@given(patterns(), texts())
def test_the_bound_holds_for_a_naive_backtracking_matcher(
    pattern: tuple[str, Group], text: str
) -> None:
    source, tree = pattern
    compiled = regex.compile(source, regex.VERSION0)
    naive = NaiveMatcher(text)
    matched = naive.fullmatch(tree)
    assert matched == (compiled.fullmatch(text) is not None), source
    steps = work(source)
    assert steps is not None, source
    assert naive.steps <= steps(len(text)), (source, text, naive.steps, steps(len(text)))


SHAPES = [
    # (source, tree, text): the shapes each narrowing of the bound is about.
    ("a*/", (Atom("a", 0, None), Atom("/", 1, 1)), "a" * 12),
    ("[a-z]+-\\d+", (Atom("[a-z]", 1, None), Atom("-", 1, 1), Atom("\\d", 1, None)), "a" * 11),
    (".*aa", (Atom(".", 0, None), Atom("a", 1, 1), Atom("a", 1, 1)), "a" * 11 + "b"),
    (".*/a/", (Atom(".", 0, None), *(Atom(c, 1, 1) for c in "/a/")), "/a" * 6),
    (
        "a*(?:/|-)?",
        (Atom("a", 0, None), Group(((Atom("/", 1, 1),), (Atom("-", 1, 1),)), True, False)),
        "a" * 10 + "b",
    ),
    ("a*a*b", (Atom("a", 0, None), Atom("a", 0, None), Atom("b", 1, 1)), "a" * 10),
    (
        ".*/a/.*",
        (Atom(".", 0, None), *(Atom(c, 1, 1) for c in "/a/"), Atom(".", 0, None)),
        "/a" * 8 + "b",
    ),
    (
        ".*aaaaaa.*",
        (Atom(".", 0, None), *(Atom("a", 1, 1) for _ in range(6)), Atom(".", 0, None)),
        "a" * 24,
    ),
    (
        "a*(?:/)?a.*",
        (
            Atom("a", 0, None),
            Group(((Atom("/", 1, 1),),), True, False),
            Atom("a", 1, 1),
            Atom(".", 0, None),
        ),
        "a" * 14 + "b",
    ),
    (
        "(?:a*(?:/)?)--",
        (
            Group(((Atom("a", 0, None), Group(((Atom("/", 1, 1),),), True, False)),), False, False),
            Atom("-", 1, 1),
            Atom("-", 1, 1),
        ),
        "a" * 12,
    ),
]


@pytest.mark.parametrize(("source", "sequence", "text"), SHAPES)
def test_the_bound_holds_for_each_narrowing(
    source: str, sequence: tuple[Node, ...], text: str
) -> None:
    tree = Group((sequence,), optional=False, capturing=False)
    naive = NaiveMatcher(text)
    matched = naive.fullmatch(tree)
    assert matched == (regex.fullmatch(source, text) is not None)
    steps = work(source)
    assert steps is not None
    assert naive.steps <= steps(len(text)), (naive.steps, steps(len(text)))


@given(patterns(), st.integers(0, 5000))
def test_the_longest_unclocked_text_is_the_last_within_the_limit(
    pattern: tuple[str, Group], n: int
) -> None:
    source, _ = pattern
    steps = work(source)
    assert steps is not None
    # max_unclocked_length searches by halving, which needs the bound to grow with n.
    assert steps(n) <= steps(n + 1)
    longest = max_unclocked_length(source)
    if longest == UNBOUNDED:
        assert steps(0) > STEP_LIMIT
        return
    assert steps(longest) <= STEP_LIMIT
    assert longest == MAX_TEXT or steps(longest + 1) > STEP_LIMIT


@pytest.mark.parametrize(
    ("source", "at_least"),
    [
        (".*/rest/api/2/search.*", 400),
        (".*/rest/api/2/issue/[A-Z]+-[0-9]+", 400),
        ("[^/]+/[^/]+", 5_000),
        ("/api/v[0-9]+/users/[0-9]+(/.*)?", 5_000),
        ("abc", MAX_TEXT),
        # The benchmark's five rules, four of them combined for GET.
        (
            "(?:.*/rest/api/2/project/[A-Z]+)|(?:.*/rest/agile/1.0/board/[0-9]+/sprint.*)"
            "|(?:.*/rest/api/2/issue/[A-Z]+-[0-9]+)|(?:.*/rest/api/2/search.*)",
            200,
        ),
    ],
)
def test_typical_rules_are_bounded(source: str, at_least: int) -> None:
    assert max_unclocked_length(source) >= at_least


@pytest.mark.parametrize(
    "source",
    [
        "(a|a)*",  # a repeated group: exponential backtracking
        "(a+)+b",
        "(?:ab)*",
        "(?i)abc",  # inline flags
        "(?=a)a",  # lookarounds
        "(?>a*)b",  # atomic group
        "(a)\\1",  # backreference
        "\\p{L}+",  # property classes
        "\\x41",
        "[[:alpha:]]+",  # POSIX class
        "a{e<=1}",  # fuzzy constraint
        "/x/{id}",  # a literal brace (or fuzzy: not guessed)
        "a*+",  # possessive
        "a**",
        "*a",
        "(a",
        "a)",
        "[a",
        "\\",
    ],
)
def test_outside_the_form_there_is_no_bound(source: str) -> None:
    assert work(source) is None
    assert max_unclocked_length(source) == UNBOUNDED


def test_nesting_too_deep_to_read_gets_no_bound() -> None:
    # Rules nest at most 100 groups (the rule parser refuses more); the bound must still
    # never raise for any source, whatever calls it.
    assert max_unclocked_length("(" * 5000 + "a" + ")" * 5000) == UNBOUNDED


def test_many_unbounded_repeats_get_no_bound() -> None:
    # Within the form, but even an empty text is near the limit: (n + 1) ** 12.
    assert max_unclocked_length("a*" * 12 + "b") < 5


def test_reads_are_weighted_by_what_they_cost_the_module() -> None:
    # Found by an adversarial search: each of these ran for milliseconds at a bound
    # that counted every character read as one step.
    plain = max_unclocked_length(".*")
    assert max_unclocked_length("\\w*") < plain  # a Unicode property lookup per read
    assert max_unclocked_length("[\\d\\w]*") < max_unclocked_length("\\w*")  # two
    assert max_unclocked_length("[" + "\\s\\d" * 256 + "\\w]*") < 100  # members in turn
    assert max_unclocked_length(".*?") < plain  # lazy: back to the matcher per read
    # A group tried at many places costs their square (the module's sorted list of
    # places tried): the same pattern without the group is bounded far further.
    assert max_unclocked_length(".*ab()?") * 10 < max_unclocked_length(".*abc")
    assert max_unclocked_length(".*ab(?:c|d)") * 10 < max_unclocked_length(".*abc")
    # Capturing groups cost every call their set-up, even on an empty text.
    assert max_unclocked_length("()" * 3000) == UNBOUNDED
    assert max_unclocked_length("(?:)" * 3000) == MAX_TEXT
