"""Loads tests/support/: its fixture modules as plugins, its helpers with assertion rewriting."""

import pytest

pytest.register_assert_rewrite("tests.support")

pytest_plugins = [
    "tests.support.fixtures",
    "tests.support.cli",
    "tests.support.smtp",
    "tests.support.upstream",
    "tests.support.s3",
    "tests.support.imap",
    "tests.support.hostile",
]


def pytest_addoption(parser):
    parser.addoption(
        "--soak",
        action="store_true",
        help="also run the soak tests (make test-soak): minutes of mixed traffic",
    )
    parser.addoption(
        "--soak-seconds", type=float, default=600.0, help="how long the soak traffic flows"
    )


def pytest_collection_modifyitems(config, items):
    """Soak tests run only with --soak: they take minutes, so make test leaves them out."""
    if config.getoption("--soak"):
        return
    skip = pytest.mark.skip(reason="a soak test: run it with make test-soak (--soak)")
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(skip)
