# The two commands: `make up` runs the local stack, `make test` runs lint, types and tests.
# Each creates the virtualenv and installs what it needs on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: up test lint faults bench clean k8s

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

up: $(STAMP)
	$(BIN)/keel up --demo 5

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m tests.typecheck

# Two pytest-xdist workers: most of the suite waits on brokers, rebalances and processes,
# so two at once on 2 cores nearly halve the wall time (tests/conftest.py groups the tests).
test: lint
	$(BIN)/pytest -n 2 --dist loadgroup

# The fault suite's long form: 20 kill rounds per test (the default run takes 2); and the
# other long-form tests (the whole local stack secured, `keel up --secure`).
faults: $(STAMP)
	$(BIN)/pytest tests/faults -m faults --all-faults --fault-iterations 20 --timeout 3600 -v
	$(BIN)/pytest tests/keel/test_secure_stack.py --all-faults -v

# The Kubernetes manifests of an overlay (dev or prod), rendered by kustomize (fetched through
# the Go module proxy on first use):  make k8s OVERLAY=prod | kubectl apply -f -
OVERLAY ?= dev
k8s: $(STAMP)
	@$(BIN)/python -m tests.deploy.tools $(OVERLAY)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
