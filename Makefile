# Two commands do everything on a fresh Debian 12 machine (root):
#   make demo   installs what is needed, then runs the 3-node migration demo
#   make test   installs what is needed, then runs the whole test suite
PYTHON ?= /usr/bin/python3
VENV   := .venv
BIN    := $(VENV)/bin
IMAGE  := images/out/manifest.json

.PHONY: install deps venv image demo test unit lint bench clean lab-down

install: deps venv image

deps:
	./scripts/install-debian-packages.sh

$(BIN)/orchestrator: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

venv: $(BIN)/orchestrator

image: venv
	$(BIN)/python images/build.py

demo: install
	$(BIN)/python -m orchestrator.demo

test: install
	$(BIN)/python -m pytest -q tests

unit: venv
	$(BIN)/python -m pytest -q tests/unit

lint: venv
	$(BIN)/ruff check orchestrator agent tests bench images
	$(BIN)/mypy

lab-down: venv
	$(BIN)/orchestrator lab down

clean: lab-down
	rm -rf images/out images/cache
