# The two commands of README.md; each sets itself up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: lab test lint bench render clean

lab: $(STAMP)            ## the local lab: the default scenario, on this machine
	$(PY) -m lab scenario burst --plot lab-burst.png --json lab-burst.json

test: $(STAMP) lint      ## every test: unit, infra, integration, lab
	$(PY) -m compileall -q agent infra lab bench tests
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) -m bench

render: $(STAMP)         ## what the dev stack would deploy, without a cloud
	$(PY) -m infra render --stack dev --out build/dev

# uv (pinned in pyproject.toml's dev set, read from there) installs the rest; pip does it
# where uv cannot be had. Both byte-compile what they install (uv only when asked): with
# PYTHONDONTWRITEBYTECODE set, as on CI's machines, nothing is compiled later, and every
# process the tests start would compile Heat's and pydantic's modules again.
UV_PIN = $(shell grep -o '"uv==[^"]*"' pyproject.toml | tr -d '"')

$(STAMP): pyproject.toml setup/system-packages.sh
	sh setup/system-packages.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	{ $(PY) -m pip install -q --disable-pip-version-check '$(UV_PIN)' \
		&& $(VENV)/bin/uv pip install --compile-bytecode --python $(PY) -e '.[dev]'; } \
		> $(VENV)/pip.log 2>&1 \
		|| $(PY) -m pip install --disable-pip-version-check -e '.[dev]' >> $(VENV)/pip.log 2>&1 \
		|| { tail -n 40 $(VENV)/pip.log; exit 1; }
	touch $(STAMP)

clean:
	rm -rf $(VENV) build .pytest_cache .ruff_cache .hypothesis
