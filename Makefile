# bellcast: `make run` serves on embedded stores, `make test` runs the whole suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The bell's Vue runtime: from the npm registry (package-lock.json), copied where the server serves it.
NODE_STAMP := node_modules/.package-lock.json
VUE_RUNTIME := static/vendor/vue.runtime.esm-browser.prod.js

.PHONY: run test bench lint typecheck lock dist clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade 'pip==25.3'

# Reinstall whenever the dependency declarations change.
$(STAMP): $(BIN)/python setup.cfg pyproject.toml constraints.txt
	$(BIN)/pip install --quiet --constraint constraints.txt --editable '.[embedded,motor,test,bench,dev]'
	touch $(STAMP)

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error

$(VUE_RUNTIME): $(NODE_STAMP)
	mkdir -p $(dir $@)
	cp node_modules/vue/dist/$(notdir $@) $@

run: $(STAMP) $(VUE_RUNTIME)
	$(BIN)/python server.py

test: $(STAMP) $(VUE_RUNTIME)
	$(BIN)/python -m pytest

# The production wheel, in dist/: the server and everything it serves (install it with constraints.txt).
dist: $(STAMP) $(VUE_RUNTIME)
	rm -rf build dist/*.whl
	$(BIN)/pip wheel --quiet --no-deps --wheel-dir dist .

# Not part of `make test`: minutes long, and it wants a quiet machine. BENCH_FLAGS=--quick for a short run.
bench: $(STAMP)
	bash bench/install-nchan.sh
	$(BIN)/python -m bench.run $(BENCH_FLAGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy server.py handlers services tests bench

# Re-pin every package after changing setup.cfg's ranges.
lock: $(BIN)/python
	$(BIN)/pip install --quiet --upgrade --editable '.[embedded,motor,test,bench,dev]'
	( echo "# Exact versions of every package bellcast installs, transitive ones included."; \
	  echo "# Regenerate with: make lock"; \
	  $(BIN)/pip freeze --all --exclude-editable | grep -v -E '^(-e|pip==)' ) > constraints.txt

clean:
	rm -rf $(VENV) var build dist .pytest_cache .mypy_cache .ruff_cache *.egg-info node_modules static/vendor test-artifacts
