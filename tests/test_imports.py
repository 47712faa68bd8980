"""Each process kind imports only what it uses: what it does not load, it does not keep resident.

Every case starts a fresh interpreter the way supervisord starts the program (project root as
the working directory, ``PROMETHEUS_MULTIPROC_DIR`` set, no secret key), imports the
program's entry module and lists the modules it loaded.  ``make bench`` (bench/rss.py)
measures what these absences are worth in resident memory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# cli: only the asyncmail command; boto3/botocore: only an S3 attachment; cryptography: only a
# secret key (ASYNCMAIL_SECRET_KEY)
NO_PROCESS_NEEDS = {"cli", "boto3", "botocore", "cryptography"}
WORKERS_NEVER = {"flask", "werkzeug", "jinja2", "web", "pydantic", "pydantic_core"}
ABSENT = {
    # requests and urllib3 only when a URL attachment is fetched; pydantic only validates
    # at intake, the dispatcher reads stored payloads without it
    "import dispatcher.__main__": NO_PROCESS_NEEDS | WORKERS_NEVER | {"requests", "urllib3",
                                                                      "reporter", "bouncer"},
    "import reporter.__main__": NO_PROCESS_NEEDS | WORKERS_NEVER | {"dispatcher", "bouncer"},
    # the bouncer reads mail and the database: no HTTP client, no SMTP side
    "import bouncer.__main__": NO_PROCESS_NEEDS | WORKERS_NEVER | {"requests", "urllib3",
                                                                    "dispatcher", "reporter"},
    # the OpenAPI document and its answer models only when /openapi.json is asked for
    "import web.wsgi": NO_PROCESS_NEEDS | {"requests", "urllib3", "tenacity", "dispatcher",
                                          "reporter", "bouncer", "web.openapi", "web.schemas"},
    # gunicorn's master runs the config file only: the app and its database live in workers
    "import runpy; runpy.run_path('etc/gunicorn.conf.py')": NO_PROCESS_NEEDS | WORKERS_NEVER
    | {"apsw"},
}  # fmt: skip


def loaded_modules(statement: str, tmp_path: Path) -> set[str]:
    """Every module name in sys.modules after ``statement`` ran in a fresh interpreter."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCMAIL_")}
    env.update(ASYNCMAIL_VAR_DIR=str(tmp_path / "var"), PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    code = f"{statement}; import sys, json; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.splitlines()[-1]))


@pytest.mark.parametrize("statement", ABSENT)
def test_process_does_not_import(statement, tmp_path):
    loaded = loaded_modules(statement, tmp_path)
    packages = {name.split(".")[0] for name in loaded}
    unwanted = ABSENT[statement] & (packages | loaded)  # loaded: submodules like web.openapi
    assert not unwanted, f"{statement} imported {sorted(unwanted)}"


def test_the_check_sees_an_import(tmp_path):
    """A module that is imported shows up (the absences above are not vacuous)."""
    loaded = loaded_modules("import dispatcher.__main__", tmp_path)
    assert {"dispatcher.core", "common.addresses", "prometheus_client", "apsw"} <= loaded


def test_the_masters_child_exit_marks_a_worker_dead(tmp_path):
    """gunicorn's hook forgets an exited worker's live gauge files."""
    live = tmp_path / "gauge_livesum_4242.db"  # what a worker's live gauge leaves behind
    live.write_bytes(b"")
    statement = (
        "import runpy, types; hooks = runpy.run_path('etc/gunicorn.conf.py'); "
        "hooks['child_exit'](None, types.SimpleNamespace(pid=4242))"
    )
    loaded_modules(statement, tmp_path)
    assert not live.exists()
