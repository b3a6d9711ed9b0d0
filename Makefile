# The README's commands. Each sets up .venv first when it is missing or stale.
PY := .venv/bin/python
export PYTHONHASHSEED := 0

.PHONY: setup test setup-oldest test-oldest setup-newest test-newest demo demo-seg bench clean

setup:
	@bash tools/setup_env.sh

# The suite's worker processes (pytest-xdist; 0: none): each test file runs
# whole in one of them, and tests/conftest.py gives each its share of the CPUs.
TEST_WORKERS ?= 2
PYTEST := -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test: setup
	$(PY) $(PYTEST) tests

# The oldest supported stack (torch 2.1.2, requirements/constraints-oldest.txt)
# in its own environment, .venv-torch2.1, mmcv without compiled ops unless
# MMREST_MMCV_OPS=1 (then the ops shim steps aside); docs/testing.md has its
# results.
setup-oldest:
	@bash tools/setup_env.sh oldest

test-oldest: setup-oldest
	MMREST_OPS_SHIM=1 .venv-torch2.1/bin/python $(PYTEST) tests

# The newest torch (2.15.0, requirements/constraints-newest.txt) in its own
# environment, .venv-torch2.15, mmcv with its compiled ops; docs/testing.md
# has its results.
setup-newest:
	@bash tools/setup_env.sh newest

test-newest: setup-newest
	.venv-torch2.15/bin/python $(PYTEST) tests

demo: setup
	$(PY) tools/run_demo.py

demo-seg: setup
	$(PY) tools/run_demo.py --config configs/demo/rest-lite_upernet_1xb8-1900it_shapes-96x96.py --work-dir work_dirs/demo_seg

bench: setup
	$(PY) tools/benchmark.py --out work_dirs/bench/benchmark.json

clean:
	rm -rf work_dirs .pytest_cache
