# Two entry points, each creating (or reusing) .venv and installing what it needs.
PY ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $(STAMP)

.PHONY: install test demo
install: $(STAMP)

test: $(STAMP)
	$(VENV)/bin/python -m pytest tests --durations=15

demo: $(STAMP)
	$(VENV)/bin/genssl demo
