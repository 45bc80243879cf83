#!/bin/sh
# For sites whose watcher hook still calls scripts/process_spool.sh: the work it
# did (ingest, notify the gate) is now `ragspool process`. Settings come from the
# environment, as `ragspool watch --exec` passes them.
exec "${RAGSPOOL_BIN:-ragspool}" process "$@"
