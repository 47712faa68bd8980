"""Loads tests/support/: its fixture modules as plugins, its helpers with assertion rewriting."""

import pytest

pytest.register_assert_rewrite("tests.support")

pytest_plugins = [
    "tests.support.fixtures",
    "tests.support.smtp",
    "tests.support.upstream",
    "tests.support.s3",
    "tests.support.hostile",
]
