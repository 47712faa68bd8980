# async-mail-service — operator and developer entry points.
#   make run      build .venv if needed, then supervisord in the foreground (Ctrl-C stops all)
#   make start    the same, daemonised;  make stop / status / restart / reload / logs
#   make test     build .venv if needed, then the whole test suite (test-fast: skip slow ones;
#                 test-soak: the 10-minute soak, never part of make test)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# every runtime path lives here; supervisord.conf and supervisorctl expand it
export ASYNCMAIL_VAR_DIR ?= $(CURDIR)/var
STAMP := $(VENV)/.installed
ASYNCMAIL := $(BIN)/asyncmail

.PHONY: run install start stop restart reload status logs test test-fast test-soak bench bench-tools lint format clean venv-check

venv-check:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' || \
	  { echo "error: Python 3.11 or newer is required (found: $$($(PYTHON) --version 2>&1))"; exit 1; }
	@$(PYTHON) -c 'import venv, ensurepip' 2>/dev/null || \
	  { echo "error: $(PYTHON) cannot create virtual environments; install it with: sudo apt-get install python3-venv"; exit 1; }

$(STAMP): setup.cfg pyproject.toml | venv-check
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)
	$(ASYNCMAIL) init

# the launcher checks the configuration, prepares var/ and execs supervisord (see etc/)
run: install
	$(ASYNCMAIL) supervisord -n

start: install
	$(ASYNCMAIL) supervisord

# returns once every program and supervisord itself have exited
stop:
	$(ASYNCMAIL) shutdown

restart:
	$(ASYNCMAIL) ctl restart all

# SIGHUP: every process re-reads the configuration; gunicorn replaces its workers gracefully
reload:
	$(ASYNCMAIL) reload

status:
	$(ASYNCMAIL) ctl status

logs:
	tail -n 50 -F $(ASYNCMAIL_VAR_DIR)/log/*.log

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# 10 minutes of mixed traffic against slow and hostile peers, dispatchers killed every 30 s
# (docs/reliability.md); not part of make test
test-soak: $(STAMP)
	$(BIN)/python -m pytest -q -s --soak -m soak -p no:cacheprovider tests/test_soak.py  # -s: its summary

bench: $(STAMP) bench-tools  # stdout is one JSON document (progress goes to stderr)
	@$(BIN)/python -m bench

# the dispatch bench's fast sink is Postfix's smtp-sink (a Python sink is slower than the
# dispatchers it measures); installed when this is a Debian host and we are root, without
# configuring or starting a mail server
bench-tools:
	@if ! command -v smtp-sink >/dev/null 2>&1 && [ ! -x /usr/sbin/smtp-sink ]; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q postfix >/dev/null 2>&1 \
	      || echo "warning: could not install postfix (smtp-sink)" >&2; \
	  else \
	    echo "note: no smtp-sink (apt-get install postfix): the dispatch bench uses aiosmtpd" >&2; \
	  fi; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) build *.egg-info
