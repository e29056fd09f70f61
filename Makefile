# `make demo` and `make test` set everything up on a fresh machine (virtual environment, pip packages).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch 2.14.1 + torchaudio 2.11.0 is the pair known to load together on our build machines
# (see ../shared/FIELD_NOTES.md); override TORCH_SPEC to use another pair.
TORCH_SPEC ?= torch==2.14.1 torchaudio==2.11.0
STAMP := $(VENV)/.installed
PYTEST_ARGS ?= --durations=20
# Extra `hf-music-w2v demo` flags, e.g. DEMO_ARGS="--recipe paper --musicnet_dir ... --nsynth_dir ..." (README).
DEMO_ARGS ?=
# The demo needs nothing from the Hub; set HF_HUB_OFFLINE=0 to let --speech_model name a Hub id.
HF_HUB_OFFLINE ?= 1

# `make test-fairseq`: the converter checked against fairseq's own forward pass (it prints the largest differences).
# fairseq stays out of the package's dependencies and out of .venv: fairseq 0.12.2 does not import on Python 3.11, the
# PyPI fork fairseq-fixed does, built against the torch already installed (--no-build-isolation, or pip pulls a newer
# torch into the build).
FAIRSEQ_VENV ?= .venv-fairseq
FAIRSEQ_PY := $(FAIRSEQ_VENV)/bin/python
FAIRSEQ_STAMP := $(FAIRSEQ_VENV)/.installed
FAIRSEQ_SPEC ?= fairseq-fixed==0.12.3.1

.PHONY: install demo reproduce test test-fairseq fairseq-check lint clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet --no-deps tinysoundfont
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=$(HF_HUB_OFFLINE) $(VENV)/bin/hf-music-w2v demo --output_dir demo_output $(DEMO_ARGS)

# The demo again from scratch, every figure compared with the recorded run; fails naming the first that differs.
reproduce: $(STAMP)
	HF_HUB_OFFLINE=$(HF_HUB_OFFLINE) $(VENV)/bin/hf-music-w2v demo --output_dir reproduce_output --fresh --quiet \
		--expect docs/demo_results.json $(DEMO_ARGS)

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest $(PYTEST_ARGS)

$(FAIRSEQ_STAMP): setup.cfg pyproject.toml
	test -x $(FAIRSEQ_PY) || $(PYTHON) -m venv $(FAIRSEQ_VENV)
	$(FAIRSEQ_PY) -m pip install --quiet $(TORCH_SPEC) cython numpy setuptools wheel
	$(FAIRSEQ_PY) -m pip install --quiet --no-build-isolation $(FAIRSEQ_SPEC)
	$(FAIRSEQ_PY) -m pip install --quiet -e '.[dev]'
	touch $(FAIRSEQ_STAMP)

test-fairseq: $(FAIRSEQ_STAMP)
	HF_HUB_OFFLINE=1 $(FAIRSEQ_PY) -m pytest tests/test_fairseq_against_fairseq.py -s -W ignore::FutureWarning $(PYTEST_ARGS)

# `make fairseq-check`: the fixtures `make test` reads (tests/fixtures/fairseq: tiny checkpoints written by fairseq and
# fairseq's outputs on them) made again by fairseq, then checked again; `git diff --stat` shows what changed.
fairseq-check: $(FAIRSEQ_STAMP)
	$(FAIRSEQ_PY) -W ignore::FutureWarning tests/fixtures/fairseq/make_fixtures.py tests/fixtures/fairseq
	HF_HUB_OFFLINE=1 $(FAIRSEQ_PY) -m pytest tests/test_fairseq_fixtures.py tests/test_fairseq_against_fairseq.py -s \
		-W ignore::FutureWarning $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check hf_music_w2v training tests benchmarks

clean:
	rm -rf $(VENV) $(FAIRSEQ_VENV) demo_output reproduce_output build *.egg-info
