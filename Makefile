# ragspool: `make demo` runs the main job end to end, `make test` the whole suite.
CARGO ?= cargo
BIN := target/debug/ragspool

.PHONY: all build release deps test lint man man-lint readme demo bench clean

all: build

deps:
	@bash scripts/ensure-deps.sh

build: deps
	$(CARGO) build

release: deps
	$(CARGO) build --release

test: deps
	$(CARGO) test --all-targets --no-fail-fast

lint: deps man-lint
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

man-lint:
	@out=$$(groff -man -ww -z man/ragspool.1 2>&1); if [ -n "$$out" ]; then echo "$$out"; exit 1; fi

man:
	@mkdir -p target
	groff -man -Tutf8 man/ragspool.1 > target/ragspool.1.txt
	@echo "rendered man page: target/ragspool.1.txt"

readme: build
	bash scripts/update-readme.sh $(BIN)

demo: build
	bash scripts/demo.sh $(BIN)

bench:
	@echo "make bench: the benchmark is not built yet in this version" >&2; exit 2

clean:
	$(CARGO) clean
