"""Fixtures for driving the ``asyncmail`` command in-process: its INI file and ``run``."""

from __future__ import annotations

import pytest

from cli import main as cli


@pytest.fixture
def ini(tmp_path):
    """The INI file the command reads: a default [smtp] account, nothing else."""
    path = tmp_path / "asyncmail.ini"
    path.write_text("[smtp]\nhost = smtp.example.org\nport = 2525\n")
    return path


@pytest.fixture
def run(var_dir, ini, capsys):
    """run(*argv) -> (exit code, stdout, stderr) of one asyncmail invocation."""

    def invoke(*argv):
        code = cli.main(["--config", str(ini), *argv])
        out, err = capsys.readouterr()
        return code, out, err

    return invoke
