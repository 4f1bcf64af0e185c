#!/usr/bin/env bash
# Checks the formatting, builds everything, tests included, then runs the whole test suite. The
# build and the test run are separate steps so that compiler output and test output do not
# interleave.
#
# Without arguments the suite runs in two parts: the unit tests, in parallel; then the integration
# tests (IntegrationTests: real coordinators and agents, floods, full disks), one at a time, so
# that each has the machine to itself: on two cores, a dozen training processes from other tests
# beside one that measures how fast a refusal comes back make the figure meaningless.
#
# Before them, the Python package's tests (pytest, in .venv: scripts/setup-python.sh makes it; the
# torch integration tests use the same interpreter).
#
# After them, the tests that need real RDMA verbs (VerbsTests, RDMATransportTests), inside a qemu guest that runs
# Soft-RoCE (scripts/rdma-guest.sh), when qemu is installed; without it they are skipped, and the
# last line says so. On the host they skip themselves when there is no RDMA device.
#
# Extra arguments go to one `swift test` run instead, e.g.:
#   scripts/test.sh --filter RingmasterSecurityTests
# Exits non-zero if the build or any test fails.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "test: formatting (scripts/format.sh --check; scripts/format.sh fixes it)"
scripts/format.sh --check

echo "test: swift build --build-tests"
swift build --build-tests

if [ "$#" -gt 0 ]; then
    echo "test: swift test --skip-build --disable-xctest $*"
    swift test --skip-build --disable-xctest "$@"
    exit 0
fi

echo "test: the Python package's tests (python/tests, with .venv from scripts/setup-python.sh)"
if [ ! -x .venv/bin/python ]; then
    echo "test: no .venv: run scripts/setup-python.sh first (it installs torch and the ringmaster package)" >&2
    exit 1
fi
.venv/bin/python -m pytest -q python/tests
echo "test: the MiniLM example's data set is what its script writes (make_topics.py --check)"
.venv/bin/python examples/torch/minilm/data/make_topics.py --check

echo "test: unit tests, in parallel"
swift test --skip-build --disable-xctest --skip '^IntegrationTests\.'

echo "test: integration tests, one at a time"
swift test --skip-build --disable-xctest --no-parallel --filter '^IntegrationTests\.'

if command -v qemu-system-x86_64 >/dev/null; then
    echo "test: the RDMA tests on real verbs, in a Soft-RoCE guest (scripts/rdma-guest.sh)"
    # Two runs in one guest: the verbs suite counts every live verbs resource, so it runs alone;
    # then the all-reduce over RDMA. Then, in a fresh guest (the long all-reduces leave its
    # emulated CPUs busy), the processes over RDMA: a peer killed mid all-reduce, and the
    # reference job with a kill and a join (and `auto` falling back to TCP).
    tests="$(swift build --show-bin-path)/RingmasterPackageTests.xctest"
    scripts/rdma-guest.sh --timeout 420 -- sh -c \
        "'$tests' --testing-library swift-testing --filter '^VerbsTests\\.' &&
         '$tests' --testing-library swift-testing --filter 'RDMATransportTests'"
    scripts/rdma-guest.sh --timeout 360 -- \
        "$tests" --testing-library swift-testing --filter '^IntegrationTests\..*OverRDMA'
    echo "test: the all-reduce between two Soft-RoCE guests joined by a virtual link (scripts/rdma-pair.sh)"
    scripts/rdma-pair.sh --timeout 300 -- "$tests" --testing-library swift-testing --filter 'RDMATransportTests.*TwoGuests'
else
    echo "test: SKIPPED the RDMA tests on real verbs: qemu-system-x86_64 is not installed (scripts/setup.sh installs it)"
fi
