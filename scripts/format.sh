#!/usr/bin/env bash
# Formats every Swift source of the project (not the generated protobuf code) with the toolchain's
# `swift format` and the committed .swift-format; `--check` only lints, failing on any violation
# (scripts/test.sh runs it so).
set -euo pipefail
cd "$(dirname "$0")/.."
mapfile -t files < <(git ls-files 'Sources/*.swift' 'Tests/*.swift' 'bench/*.swift' 'Package.swift' | grep -v '/Generated/')
if [ "${1:-}" = "--check" ]; then
    swift format lint --strict "${files[@]}"
else
    swift format format --in-place "${files[@]}"
fi
