#!/usr/bin/env bash
# Offline dependency audit: RustSec advisories from the dated snapshot in
# ../shared/advisory-db (or $ADVISORY_DB), licences against deny.toml's allow-list,
# and duplicate versions deny.toml does not explain. Installs cargo-deny when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
src=${ADVISORY_DB:-../shared/advisory-db}
[ -d "$src/crates" ] || { echo "audit: no advisory database at $src (set ADVISORY_DB)" >&2; exit 1; }
command -v cargo-deny >/dev/null || cargo install --locked cargo-deny
# cargo-deny reads the database from a git checkout under db-path, named after the
# URL in deny.toml; the snapshot is a plain directory, so it is committed into one,
# dated as the snapshot is, so that cargo-deny's freshness view is the snapshot's.
db=target/advisory-dbs/advisory-db-3157b0e258782691
date=$(sed -n 's/^date //p' "$src/SNAPSHOT")
commit=$(sed -n 's/^commit //p' "$src/SNAPSHOT")
echo "audit: RustSec advisory database snapshot of $date (commit ${commit:-unknown})"
if [ "$(cat "$db/.snapshot" 2>/dev/null)" != "$commit $date" ]; then
  rm -rf "$db"
  mkdir -p "$db"
  cp -R "$src"/. "$db"/
  chmod -R u+w "$db"
  (cd "$db" && git init -q && git add -A \
    && GIT_AUTHOR_DATE="$date" GIT_COMMITTER_DATE="$date" \
       git -c user.name=ragspool -c user.email=audit@localhost commit -q -m "snapshot $commit")
  echo "$commit $date" > "$db/.snapshot"
fi
cargo deny --offline check advisories bans licenses
