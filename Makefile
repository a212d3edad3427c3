# Two commands on a fresh machine (Python 3.11, pip, make): `make serve` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
PIP := $(BIN)/pip install --disable-pip-version-check -q
# As in the Docker images: two glibc malloc arenas, not 8 per core (each thread's arena keeps what it freed; the
# fuzz of python -m service.stress peaked at 1,127-1,267 MiB with the default, 776-1,016 MiB with two).
export MALLOC_ARENA_MAX ?= 2

.PHONY: serve test lint bench install-serve install-dev clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Serving needs no torch: the serve extra only.
$(VENV)/.serve: pyproject.toml | $(BIN)/python
	$(PIP) -e '.[serve]'
	touch $@

# Training, export and tests need torch (CPU wheel) and the test oracles. pysodmetrics is installed without
# its dependencies because it pulls opencv-python-headless, which would share cv2/ with opencv-contrib.
$(VENV)/.dev: pyproject.toml | $(BIN)/python
	$(PIP) -e '.[serve,train,dev]'
	$(PIP) --no-deps pysodmetrics==1.6.2
	touch $@ $(VENV)/.serve

install-serve: $(VENV)/.serve
install-dev: $(VENV)/.dev

serve: $(VENV)/.serve
	$(BIN)/python -m service --host $(HOST) --port $(PORT)

test: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

lint: $(VENV)/.dev
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: $(VENV)/.dev
	$(BIN)/python -m export.bench --bundle default --baseline picanet_lite_scratch --also class_effl0,arn_effl0

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
