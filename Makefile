# Thygon: the two everyday commands are `make run` and `make test`; `make` alone lists all.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# Extra arguments for `make test`, passed to cargo test: make test ARGS='-- --nocapture'
ARGS ?=

.PHONY: help run test bench build fmt lint services clean openapi-check

help: ## List the targets
	@echo "Thygon make targets:"
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*## "} {printf "  make %-9s %s\n", $$1, $$2}'

run: ## Start everything locally behind http://127.0.0.1:8080 (Ctrl-C stops it)
	@bash scripts/run.sh

test: ## Build the binaries and run every test (needs PostgreSQL and RabbitMQ; started if needed)
	@bash scripts/test.sh $(ARGS)

bench: ## Benchmark a fresh stack (release builds): prints a table, writes target/bench/results.json
	@bash scripts/bench.sh

openapi-check: ## Validate /openapi.json (openapi-spec-validator) and fuzz the API (schemathesis)
	@bash scripts/openapi-check.sh

build: ## cargo build --release --workspace
	cargo build --release --workspace

fmt: ## Format the code (cargo fmt --all)
	cargo fmt --all

lint: ## cargo fmt --check and clippy with warnings as errors
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

services: ## Install missing packages, start PostgreSQL and RabbitMQ, create the role and database
	@bash scripts/ensure-services.sh

clean: ## Remove build output (target/) and local run state (.run/)
	cargo clean
	rm -rf .run
