# The two commands of the README's quick start.
.PHONY: run test

run:  ## install (CPU-only, into .venv) and launch the app on http://127.0.0.1:8501
	bash scripts/setup.sh
	.venv/bin/mmviz app

test: ## install with test extras and Chromium, then run the whole test suite
	bash scripts/setup.sh --test
	.venv/bin/python -m pytest
