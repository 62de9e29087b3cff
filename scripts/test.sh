#!/usr/bin/env bash
# The README's test command: set up, lint, typecheck, unit tests, then the integration suite
# against one private daemon and one private registry shared by every integration test file.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
npm run --silent lint
npm run --silent typecheck
npm run --silent test:unit
if [[ -x scripts/integration.sh ]]; then
  scripts/integration.sh
else
  echo "test.sh: NO INTEGRATION SUITE YET (scripts/integration.sh missing)" >&2
  exit 1
fi
