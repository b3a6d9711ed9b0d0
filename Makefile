# The README's commands. Each sets up .venv first when it is missing or stale.
PY := .venv/bin/python
export PYTHONHASHSEED := 0

.PHONY: setup test demo demo-seg bench clean

setup:
	@bash tools/setup_env.sh

test: setup
	$(PY) -m pytest -q tests

demo: setup
	$(PY) tools/run_demo.py

demo-seg: setup
	$(PY) tools/run_demo.py --config configs/upernet/rest_lite_upernet_shapes_demo.py --work-dir work_dirs/demo_seg

bench: setup
	$(PY) tools/benchmark.py --out work_dirs/bench/benchmark.json

clean:
	rm -rf work_dirs .pytest_cache
