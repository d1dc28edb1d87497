#!/usr/bin/env bash
# Runs every test of the workspace on a fresh machine.
#
# Installs nothing outside the repository: cargo's own caches aside, all state
# lives under ./target and ./.venv (moto, the AWS emulator jit-aws's tests run
# against; needs python3). Later provider crates add their services here, so
# this stays the one command that runs everything.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# Property tests: a fixed budget keeps CI time predictable.
export PROPTEST_CASES="${PROPTEST_CASES:-96}"

step() { printf '\n==> %s\n' "$*"; }

step "format"
cargo fmt --all -- --check

step "lint"
cargo clippy --workspace --all-targets --all-features -- -D warnings

step "moto (a real AWS emulator for jit-aws; pinned, installed into ./.venv)"
bash scripts/moto.sh start
trap 'bash scripts/moto.sh stop' EXIT
eval "$(bash scripts/moto.sh env)"

step "tests"
# `--all-features` includes jit-core's `postgres` store: its tests find a real
# server (JIT_TEST_POSTGRES_URL, else 127.0.0.1:5432, else a throwaway cluster
# from the installed initdb/pg_ctl) and fail, naming what to install, when
# there is none. Nothing is skipped.
cargo test --workspace --all-features --no-fail-fast

step "docs"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --all-features --no-deps --quiet
