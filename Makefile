# async-mail-service — operator and developer entry points.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export ASYNCMAIL_VAR_DIR ?= $(CURDIR)/var
export ASYNCMAIL_DISPATCHERS ?= 2
SUPERVISORD_CONF := etc/supervisord.conf
STAMP := $(VENV)/.installed

.PHONY: run install start stop restart status logs test test-fast bench lint format clean venv-check

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
	$(BIN)/asyncmail init

run: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/supervisord -n -c $(SUPERVISORD_CONF)

start: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/supervisord -c $(SUPERVISORD_CONF)

stop:
	$(BIN)/supervisorctl -c $(SUPERVISORD_CONF) shutdown

restart:
	$(BIN)/supervisorctl -c $(SUPERVISORD_CONF) restart all

status:
	$(BIN)/supervisorctl -c $(SUPERVISORD_CONF) status

logs:
	tail -n 50 -F $(ASYNCMAIL_VAR_DIR)/log/*.log

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(STAMP)
	$(BIN)/python -m bench

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) build *.egg-info
