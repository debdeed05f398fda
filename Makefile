# The two commands of the README: `make demo` and `make test`. Each sets up
# everything it needs first (scripts/setup.sh), so a fresh clone needs nothing else.
PY := .venv/bin/python

.PHONY: setup demo test lint bench bench-peers clean

setup:
	@bash scripts/setup.sh

demo: setup
	$(PY) scripts/demo.py

test: lint
	$(PY) -m pytest -q -n 2 --dist loadfile

lint: setup
	$(PY) -m ruff check modelfs tests scripts
	$(PY) -m ruff format --check modelfs tests scripts

bench: setup
	$(PY) scripts/bench.py

# modelfs against JuiceFS, rclone mount and s3fs-fuse on one SeaweedFS: docs/BENCHMARKS.md
bench-peers: setup
	$(PY) scripts/bench.py --peers

clean:
	rm -rf .venv demo-store demo-store.cache demo-mnt demo-mnt.cache .pytest_cache
