# berth's entry points. Every target honours an already-set DOCKER_HOST;
# otherwise scripts/engine.sh finds or starts an engine (installing it first
# on a fresh machine).

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
WITH_ENGINE := scripts/with-engine
STATE_DIR ?= .berth
LISTEN ?= 127.0.0.1:2222
IMAGE ?= berth-host:latest

.PHONY: engine image build run test lint bench bench-smoke

## Find or start a Docker engine and print the DOCKER_HOST to use.
engine:
	@scripts/engine.sh

## Build the host image on that engine.
image:
	@$(WITH_ENGINE) hostimage/build.sh $(IMAGE)

build:
	cargo build --release --locked

## Serve on $(LISTEN) with state in $(STATE_DIR).
run: build image
	@$(WITH_ENGINE) ./target/release/berth serve --state-dir $(STATE_DIR) --listen $(LISTEN) --image $(IMAGE)

## All tests: unit tests and end-to-end tests against a real engine.
test: image
	@scripts/test-deps.sh
	@$(WITH_ENGINE) cargo test --workspace --locked -- --test-threads=4
	@$(MAKE) --no-print-directory bench-smoke

## Benchmarks against OpenSSH-in-dind and direct Docker; writes bench/RESULTS.md
## and bench/results.csv. Takes a while (BENCH_ARGS="--only 1,2 --runs 10" to narrow).
bench: build image
	@$(WITH_ENGINE) bench/bench.sh $(BENCH_ARGS)

## Every benchmark once, with tiny sizes, so the bench never rots (part of `make test`).
bench-smoke: image
	cargo build --locked -p berth
	@$(WITH_ENGINE) bench/bench.sh --smoke --berth target/debug/berth

lint:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets --locked -- -D warnings
