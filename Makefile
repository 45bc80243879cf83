# ragspool: `make demo` runs the main job end to end, `make test` the whole suite.
CARGO ?= cargo
BIN := target/debug/ragspool

.PHONY: all build release install deps tools test fuzz lint audit man man-lint man-gz completions readme demo bench bench-pace bench-storage bench-citus torture deb rpm clean

all: build

deps:
	@bash scripts/ensure-deps.sh

build: deps
	$(CARGO) build

release: deps
	$(CARGO) build --release

# The binary alone, for a user's own PATH (the packages install everything else).
PREFIX ?= $(HOME)/.local
install: release
	install -D -m 755 target/release/ragspool $(DESTDIR)$(PREFIX)/bin/ragspool
	@echo "installed $(DESTDIR)$(PREFIX)/bin/ragspool"

test: deps
	$(CARGO) test --all-targets --no-fail-fast
	$(CARGO) test --doc
	$(MAKE) fuzz

# Each fuzz target for FUZZ_SECS on the committed seed corpus (new finds go under
# target/). cargo-fuzz needs nightly compiler flags; the one toolchain is stable,
# so this build alone runs with RUSTC_BOOTSTRAP=1.
FUZZ_SECS ?= 30
fuzz: deps
	@command -v cargo-fuzz >/dev/null || $(CARGO) install --locked cargo-fuzz
	@for t in record envfile; do \
		mkdir -p target/fuzz-corpus/$$t; \
		(cd fuzz && RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run $$t ../target/fuzz-corpus/$$t corpus/$$t -- -max_total_time=$(FUZZ_SECS)) || exit 1; \
	done

lint: deps man-lint
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

# RustSec advisories (offline snapshot), licences and duplicate versions (deny.toml).
audit:
	bash scripts/audit.sh

man-lint:
	@out=$$(groff -man -ww -z man/ragspool.1 2>&1); if [ -n "$$out" ]; then echo "$$out"; exit 1; fi

man:
	@mkdir -p target
	groff -man -Tutf8 man/ragspool.1 > target/ragspool.1.txt
	@echo "rendered man page: target/ragspool.1.txt"

man-gz:
	@mkdir -p target/man
	gzip -9 -n -c man/ragspool.1 > target/man/ragspool.1.gz

# Shell completion scripts from the release binary's own registry, for the packages.
completions: release
	@mkdir -p target/completions
	target/release/ragspool completions bash > target/completions/ragspool
	target/release/ragspool completions zsh > target/completions/_ragspool
	target/release/ragspool completions fish > target/completions/ragspool.fish

# Packaging tools from crates.io, installed once when missing.
tools:
	@command -v cargo-deb >/dev/null || $(CARGO) install --locked cargo-deb
	@command -v cargo-generate-rpm >/dev/null || $(CARGO) install --locked cargo-generate-rpm

deb: deps tools man-gz completions
	$(CARGO) deb
	@ls target/debian/*.deb

rpm: deps tools man-gz release completions
	$(CARGO) generate-rpm
	@ls target/generate-rpm/*.rpm

readme: build
	bash scripts/update-readme.sh $(BIN)

demo: build
	bash scripts/demo.sh $(BIN)

# Reports throughput, latency and memory against PostgreSQL's own COPY limit;
# BENCH_ARGS passes options (e.g. BENCH_ARGS="--files 20 --runs 1" for a quick look).
bench: deps release
	python3 bench/bench.py $(BENCH_ARGS)

# Only the embeddings-pace rows of the benchmark (bench/results/pace.md).
bench-pace: deps release
	python3 bench/bench.py --pace-only

# Only the storage-format rows: vector, halfvec, TEXT_SEARCH (bench/results/storage.md).
bench-storage: deps release
	python3 bench/bench.py --storage-only $(BENCH_ARGS)

# Only the Citus rows of the benchmark (bench/results/citus.md).
bench-citus: deps release
	python3 bench/bench.py --citus-only $(BENCH_ARGS)

# A fault campaign on throwaway servers (not part of `make test`): TORTURE_SECS,
# TORTURE_FAULTS, TORTURE_SEED, TORTURE_RATE, TORTURE_LIVENESS_SECS; writes bench/results/torture.md.
torture: deps release
	python3 scripts/torture.py

clean:
	$(CARGO) clean
