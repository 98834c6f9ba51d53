#!/usr/bin/env bash
# Fuzzes the parsers that read what the network sends (fuzz/, cargo fuzz layout): builds
# every target and runs each for FUZZ_SECONDS (default 5) over its committed corpus,
# fuzz/corpus/<target>/. Fails on the first crash, leak or timeout, leaving the input in
# fuzz/artifacts/<target>/ (reproduce with `cargo fuzz run -s none <target> <file>`).
#
# Usage: bash scripts/fuzz.sh [TARGET...]     FUZZ_SECONDS=60 bash scripts/fuzz.sh
#
# Stable Rust is enough: `-s none` (no sanitizer) is the one cargo-fuzz mode that passes
# no `-Z` flag to rustc; the coverage instrumentation (`-Cpasses=sancov-module`,
# `-Cllvm-args=-sanitizer-coverage-*`) is stable and libFuzzer itself is compiled from
# libfuzzer-sys's C++ sources with the system's C++ compiler. The targets' code is safe
# Rust, so AddressSanitizer would add little; panics, overflow (debug assertions are on)
# and OOM are what the fuzzer catches. No RUSTC_BOOTSTRAP is needed.
#
# New inputs a run finds go to a scratch directory, never into the committed corpus. To
# grow the corpus: FUZZ_SECONDS=60 FUZZ_KEEP=1 bash scripts/fuzz.sh, then
# `cargo fuzz cmin -s none <target>` in fuzz/ (see fuzz/README.md).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../fuzz"
export PATH="${HOME:-/root}/.cargo/bin:${PATH}"

CARGO_FUZZ_VERSION=0.13.2
seconds="${FUZZ_SECONDS:-5}"
# Release build with debug assertions and overflow checks, no sanitizer (stable Rust).
flags=(--sanitizer none --release --debug-assertions)

step() { printf '\n==> %s\n' "$*"; }

if [[ "$(cargo fuzz --version 2> /dev/null || true)" != *" ${CARGO_FUZZ_VERSION}" ]]; then
  step "cargo install --locked cargo-fuzz --version ${CARGO_FUZZ_VERSION}"
  cargo install --locked cargo-fuzz --version "${CARGO_FUZZ_VERSION}" < /dev/null
fi

if (($#)); then
  targets=("$@")
else
  mapfile -t targets < <(cargo fuzz list)
fi

step "cargo fuzz build ${flags[*]} (${#targets[@]} targets)"
cargo fuzz build "${flags[@]}" < /dev/null

scratch="$(mktemp -d "${TMPDIR:-/tmp}/gantry-fuzz.XXXXXX")"
trap 'rm -rf "$scratch"' EXIT
failed=()
for target in "${targets[@]}"; do
  mkdir -p "corpus/${target}" "$scratch/${target}"
  step "fuzz ${target} for ${seconds}s over corpus/${target} ($(ls "corpus/${target}" | wc -l) inputs)"
  # The first directory receives new inputs; the committed corpus is only read.
  if ! cargo fuzz run "${flags[@]}" "$target" "$scratch/${target}" "corpus/${target}" -- \
    -max_total_time="$seconds" -timeout=20 -rss_limit_mb=2048 -print_final_stats=1 \
    < /dev/null; then
    failed+=("$target")
  fi
  if [[ -n "${FUZZ_KEEP:-}" ]]; then
    cp -n "$scratch/${target}"/* "corpus/${target}/" 2> /dev/null || true
  fi
done

if ((${#failed[@]})); then
  printf '\nFUZZ FAILED: %s (inputs in fuzz/artifacts/)\n' "${failed[*]}" >&2
  exit 1
fi
printf '\nfuzz: %d targets ran %ss each without a crash\n' "${#targets[@]}" "$seconds"
