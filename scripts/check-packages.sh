#!/usr/bin/env bash
# Builds the .deb and .rpm, installs the .deb on this machine, and checks what
# it installed: the binary runs, the units verify, their systemd-analyze
# exposure is 2.0 or lower, lintian finds no errors, the .rpm lists its files.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "check-packages: needs root to install the .deb" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive
need=()
command -v lintian >/dev/null || need+=(lintian)
command -v rpm >/dev/null || need+=(rpm)
command -v systemd-analyze >/dev/null || need+=(systemd)
if [ ${#need[@]} -gt 0 ]; then
  apt-get install -y -qq "${need[@]}" >/dev/null || { apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null; }
fi

make deb
deb=$(ls target/debian/ragspool_*.deb | tail -1)
dpkg -i "$deb"
/usr/bin/ragspool --version
for f in /usr/share/bash-completion/completions/ragspool /usr/share/zsh/vendor-completions/_ragspool \
         /usr/share/fish/vendor_completions.d/ragspool.fish; do
  [ -s "$f" ] || { echo "check-packages: $f missing" >&2; exit 1; }
done
bash -n /usr/share/bash-completion/completions/ragspool
units=(/lib/systemd/system/ragspool.service /lib/systemd/system/ragspool-maintain.service /lib/systemd/system/ragspool-maintain.timer)
systemd-analyze verify "${units[@]}"
for unit in /lib/systemd/system/ragspool.service /lib/systemd/system/ragspool-maintain.service; do
  systemd-analyze security --offline=true --threshold=20 "$unit" | tail -1
done
echo "lintian:"
lintian --fail-on error "$deb"
echo "lintian: no errors"

make rpm
rpm -qpl target/generate-rpm/ragspool-*.rpm
