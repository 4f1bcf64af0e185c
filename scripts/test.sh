#!/usr/bin/env bash
# Builds everything, tests included, then runs the whole test suite. The build and the test run
# are separate steps so that compiler output and test output do not interleave.
#
# Extra arguments go to `swift test`, e.g.:
#   scripts/test.sh --filter RingmasterSecurityTests
# Exits non-zero if the build or any test fails.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "test: swift build --build-tests"
swift build --build-tests

echo "test: swift test --skip-build --disable-xctest $*"
swift test --skip-build --disable-xctest "$@"
