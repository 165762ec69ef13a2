# Two commands on a fresh Debian/Ubuntu machine: `make demo` and `make test`.
# Both install what is missing: Debian packages, the virtual environment in .venv,
# torch (pinned, installed first so pip never resolves a bare `torch`), and the project.

VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_VERSION := 2.13.0
SYSTEM_PACKAGES := portaudio19-dev libsndfile1 mosquitto espeak-ng sox ffmpeg pulseaudio pulseaudio-utils libasound2-plugins
# For the tests only: the caption page is tested in headless Chromium (tests/test_caption_page.py).
TEST_SYSTEM_PACKAGES := chromium

.PHONY: setup system-deps test-deps demo test lint typecheck unit bench clean install

setup: system-deps $(STAMP)

system-deps:
	@scripts/install-system-deps.sh $(SYSTEM_PACKAGES)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==$(TORCH_VERSION)
	$(BIN)/pip install --quiet -e '.[dev,multilingual]'
	# FunASR's reference SenseVoice, for the parity tests only (tests/test_sensevoice.py):
	# without its dependencies, which pull in a training stack (its imports need only
	# kaldiio, librosa, six and kaldi-native-fbank, in the dev extra).
	$(BIN)/pip install --quiet --no-deps 'funasr==1.4.16'
	# Rhasspy's own Hermes message classes, for the Hermes tests: it pins paho-mqtt 1.5,
	# which aiomqtt cannot use, and needs only dataclasses-json (in the dev extra).
	$(BIN)/pip install --quiet --no-deps 'rhasspy-hermes==0.6.2'
	touch $(STAMP)

demo: setup
	$(BIN)/roomscribe demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy

test-deps: .venv-ha/.installed
	@scripts/install-system-deps.sh $(TEST_SYSTEM_PACKAGES)

# Home Assistant in its own venv (it pins its own aiohttp and wyoming), for the test with its
# Wyoming integration (tests/test_wyoming.py).
.venv-ha/.installed: tests/ha-requirements.txt
	python3 -m venv .venv-ha
	.venv-ha/bin/pip install --quiet -r tests/ha-requirements.txt
	touch .venv-ha/.installed

test: lint typecheck test-deps
	$(BIN)/pytest

bench: setup
	$(BIN)/python bench/accuracy.py
	$(BIN)/python bench/daemon_e2e.py

# As root: the service under /opt/roomscribe with its own venv, /etc/roomscribe, the unit
# (and its GPU drop-in when there is a GPU), then enabled and started (docs/install.md).
install: system-deps
	scripts/install-service.sh

clean:
	rm -rf $(VENV) .venv-ha .pytest_cache .mypy_cache .ruff_cache *.egg-info
