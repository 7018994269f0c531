# The one entry point: `make demo`, `make test`, `make lint`, `make bench`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench dev clean kafka

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/flowhook demo

dev: $(STAMP)
	$(BIN)/flowhook dev --flows examples/flows

# The embedded leg, then (where java and mvn exist) the Apache Kafka legs: see .ci/test-legs.
test: $(STAMP)
	bash .ci/install-system-packages
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache
	$(BIN)/mypy
	bash .ci/test-legs

# ruff; the import direction (import-linter, [tool.importlinter]); types (mypy, [tool.mypy]).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/flowhook bench

# Apache Kafka's jars from Maven Central (deploy/kafka/pom.xml) into .kafka/lib; a no-op
# when they are there. ~/.m2 caches the downloads.
KAFKA_LIB := .kafka/lib
KAFKA_STAMP := $(KAFKA_LIB)/.fetched

kafka: $(KAFKA_STAMP)

$(KAFKA_STAMP): deploy/kafka/pom.xml
	rm -rf $(KAFKA_LIB)
	mvn -q -B -f deploy/kafka/pom.xml dependency:copy-dependencies -DincludeScope=runtime \
		-DoutputDirectory=$(CURDIR)/$(KAFKA_LIB)
	touch $@

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .kafka
