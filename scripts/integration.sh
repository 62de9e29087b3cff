#!/usr/bin/env bash
# The integration suite: one private registry and one private capsuled for all test files.
set -euo pipefail
cd "$(dirname "$0")/.."
exec node dist/integration/run.js "$@"
