# The two commands of the README. Each sets everything up first, so a fresh machine needs nothing else.
.PHONY: demo test setup bench
demo:
	bash scripts/setup.sh && .venv/bin/convae demo
test:
	bash scripts/setup.sh --test && .venv/bin/python -m pytest -q
bench:
	bash scripts/setup.sh --test && .venv/bin/python bench/run.py
