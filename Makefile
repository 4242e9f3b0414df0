# Every target sets up (or updates) its own virtual environment first, so any of
# them can be the first command run on a fresh clone.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: setup demo test bench clean

$(STAMP): pyproject.toml requirements.lock
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "sopflow needs Python >= 3.11, found " + sys.version.split()[0]'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c requirements.lock -e '.[test]'
	@touch $(STAMP)

setup: $(STAMP)

## The main job: validate the example SOPs, draw one, run one on a local Ray cluster, then run the
## invoice example in both modes (an ADK agent against the example ledger MCP server, and as a DAG).
demo: $(STAMP)
	$(VENV)/bin/sopflow validate examples/hello-linear.yaml examples/fanout-condition.yaml examples/invoice-reconciliation.yaml
	$(VENV)/bin/sopflow graph examples/fanout-condition.yaml
	$(VENV)/bin/sopflow run examples/fanout-condition.yaml --input threshold=1
	@# from a scratch directory: the example ledger server keeps its SQLite file in its working directory
	cd "$$(mktemp -d)" && $(CURDIR)/$(VENV)/bin/sopflow compare $(CURDIR)/examples/invoice-reconciliation.yaml --input account_id=ACME-001

## The whole test suite (starts one local Ray cluster for the run).
test: $(STAMP)
	$(PY) -m pytest

## Benchmarks; figures are printed and written to bench/RESULTS.md.
bench: $(STAMP)
	$(PY) -m bench

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
