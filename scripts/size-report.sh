#!/usr/bin/env bash
# The figures README.md gives under Dependencies: crates in the release build, the
# stripped binary's size, and the five crates that add the most code (cargo-bloat,
# installed when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
count() {
  cargo tree -e "$1" --prefix none --target x86_64-unknown-linux-gnu \
    | sed 's/ (\*)//; s/ (proc-macro)//; s/ (\/.*//' | sort -u | wc -l
}
echo "crates in the release build: $(count normal,build) ($(count normal) linked)"
cargo build --release --quiet
strip -o target/ragspool.stripped target/release/ragspool
echo "stripped binary: $(stat -c %s target/ragspool.stripped) bytes (unstripped $(stat -c %s target/release/ragspool))"
command -v cargo-bloat >/dev/null || cargo install --locked cargo-bloat
cargo bloat --release --crates -n 5
