#!/usr/bin/env bash
# The README's run command: set up (first run installs packages and builds guest assets), then
# start capsuled on its default socket (/run/capsule/docker.sock) and data root (/var/lib/capsule).
# Extra arguments go to capsuled (e.g. --socket, --data-root, --accel).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec node dist/cmd/capsuled.js "$@"
