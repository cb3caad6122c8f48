"""Django is set up (with the test project) before these tests are collected."""

from __future__ import annotations

from tests.support.django import setup

setup()
