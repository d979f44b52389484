# Entry points named in README.md. `make test` runs every tier.
VENV := .venv
PY := $(VENV)/bin/python
PYTEST := $(PY) -m pytest -p no:cacheprovider

.PHONY: setup proto lint test test-fast test-unit test-integration test-e2e bench-storage \
	bench-storage-list bench-build bench-queue bench-list-builds bench-soak bench-customise bench-publish bench-isolation bench-auth demo \
	images smoke-images clean

setup:
	scripts/setup.sh

proto: setup
	scripts/gen-proto.sh

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test-unit: setup
	$(PYTEST) tests/unit

test-integration: setup
	$(PYTEST) tests/integration

test-e2e: setup
	$(PYTEST) tests/e2e

# One pytest run for the tiers, so CI gets one summary line; the slowest tests are
# listed so the suite's time can be kept under its goal.
test: lint
	$(PYTEST) --durations=30 tests

# Lint, the unit tests and the integration tests that build no image and boot no VM
# (those carry the `build` marker): one pytest run, about a minute.
test-fast: lint
	$(PYTEST) -m "not build" tests/unit tests/integration

bench-storage: setup
	$(PY) bench/storage/bench.py

bench-storage-list: setup
	$(PY) bench/storage_list/bench.py

bench-build: setup
	$(PY) bench/build/bench.py

bench-queue: setup
	$(PY) bench/queue/bench.py

bench-list-builds: setup
	$(PY) bench/list_builds/bench.py

bench-soak: setup
	$(PY) bench/soak/bench.py

bench-customise: setup
	$(PY) bench/customise/bench.py

bench-publish: setup
	$(PY) bench/publish/bench.py

bench-isolation: setup
	$(PY) bench/isolation/bench.py

bench-auth: setup
	$(PY) bench/auth/bench.py

demo: setup
	scripts/demo.sh

# The service images (kiln/storage, kiln/builder, kiln/publisher) built with podman from a
# local Debian base (minutes cold, seconds warm: podman's layer cache).
images:
	scripts/build-images.sh

# Each image (built first if need be) run as deploy/k8s runs it and checked, with
# testcontainers through podman's Docker API: tests/e2e/test_containers.py, which
# `make test` runs too. -s shows each image's size and its time to SERVING.
smoke-images: setup
	$(PYTEST) -s tests/e2e/test_containers.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache
