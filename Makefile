# wardstream: one entry point per job. `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip --disable-pip-version-check

.PHONY: install up up-cluster down status demo test test-fast bench drills soak clean dashboards

install: ## install wardstream and its test tools into the current Python
	$(PIP) install -q --root-user-action=ignore -e '.[dev]'

up: install ## start the local Kafka (KRaft, from Maven Central jars) and PostgreSQL
	wardstream stack up

up-cluster: install ## a local 3-broker Kafka cluster (9092/9094/9096) and PostgreSQL; then eval "$$(wardstream stack env)"
	wardstream stack up --brokers 3

down: ## stop the local stack cleanly (one broker or the cluster)
	wardstream stack down

status:
	wardstream stack status

demo: up ## stream a simulated period through the whole pipeline, with a live view and a summary
	wardstream demo

test: up ## the whole test suite against the real broker and database
	$(PYTHON) -m pytest

test-fast: install ## unit tests and the packages' doctests (-m "not e2e": no broker or database)
	$(PYTHON) -m pytest -m "not e2e"

bench: up ## benchmarks: prints a table, writes bench/results/*.json and bench/results/e2e.png
	$(PYTHON) -m bench
	$(PYTHON) -m bench.plot

drills: up ## every fault drill 10 times in a row, with the pass counts (about an hour; not in CI)
	$(PYTHON) tests/loop_drills.py

soak: up ## chaos soak: workers + sink on a private 3-broker cluster, a seeded SIGKILL every 30-60 s (~15 min; not in CI)
	$(PYTHON) tests/soak.py $(SOAK_ARGS)

dashboards: install ## regenerate the committed Grafana dashboard JSON from code
	$(PYTHON) -m grafana.build

clean:
	rm -rf .wardstream .pytest_cache
