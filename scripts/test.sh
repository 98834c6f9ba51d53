#!/usr/bin/env bash
# Runs every Gantry test on a fresh Debian 12 machine: installs the real peers the tests use
# (containerd + runc, skopeo, buildah, umoci, CNCF distribution, static busybox, iproute2),
# then rustfmt, clippy and `cargo test --workspace`.
#
# Usage: bash scripts/test.sh        (as root; works with CI=true and no stdin)
# Exits non-zero at the first failing step.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Debian puts runc and iproute2's `ip` in sbin; cargo may live in ~/.cargo/bin.
export PATH="${HOME:-/root}/.cargo/bin:${PATH}:/usr/local/sbin:/usr/sbin:/sbin"
export DEBIAN_FRONTEND=noninteractive
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"

step() { printf '\n==> %s\n' "$*"; }
fail() { printf '\nFAILED: %s\n' "$*" >&2; exit 1; }

# Debian packages of the real peers the tests run against.
PACKAGES=(
  containerd        # containerd, ctr, containerd-shim-runc-v2
  runc
  skopeo
  buildah
  umoci
  docker-registry   # CNCF distribution, reference registry
  busybox-static    # /bin/busybox for test base images
  iproute2          # ip netns, tc tbf for separate hosts / slow links
  openssl           # test certificates for the registry TLS tests
  jq                # bench/run.sh --quick (the benchmark scripts read and write JSON)
  curl              # bench/run.sh --quick (registry and agent probes)
  chromium          # the demo's HTML report checked in a real browser (crates/cli/tests/demo.rs)
  protobuf-compiler # protoc: containerd's snapshots and CRI gRPC APIs are generated at build time
  xfsprogs          # mkfs.xfs: the snapshotter's tests on a loop-mounted XFS with reflink
  g++               # libFuzzer, compiled by libfuzzer-sys for scripts/fuzz.sh
)

step "Checking privileges"
if [[ "$(id -u)" != 0 ]]; then
  fail "the tests start containerd, runc and network namespaces: run as root"
fi

step "Checking Debian packages: ${PACKAGES[*]}"
missing=()
for pkg in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$pkg")
  fi
done
if ((${#missing[@]})); then
  echo "missing: ${missing[*]}"
  # Keep package scripts from starting services (docker-registry would take port 5000).
  policy_added=""
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    policy_added=1
  fi
  cleanup_policy() { if [[ -n "${policy_added}" ]]; then rm -f /usr/sbin/policy-rc.d; fi; }
  trap cleanup_policy EXIT
  step "apt-get update"
  apt-get update -q < /dev/null || fail "apt-get update"
  step "apt-get install ${missing[*]}"
  apt-get install -y -q --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
    "${missing[@]}" < /dev/null || fail "apt-get install ${missing[*]}"
  cleanup_policy
  trap - EXIT
else
  echo "all installed"
fi

# moto's server mode: the S3-compatible server the registry's S3 backend is tested against.
step "Checking moto (S3-compatible test server, PyPI moto[server])"
command -v python3 > /dev/null || fail "python3 not found (needed for moto's S3 server)"
if ! python3 -c 'import moto, moto.server' > /dev/null 2>&1; then
  if ! python3 -m pip --version > /dev/null 2>&1; then
    step "apt-get install python3-pip"
    apt-get update -q < /dev/null || fail "apt-get update"
    apt-get install -y -q --no-install-recommends python3-pip < /dev/null \
      || fail "apt-get install python3-pip"
  fi
  step "pip install moto[server]"
  # Debian 12 marks its python as externally managed; moto is only a test peer.
  python3 -m pip install --quiet 'moto[server]' < /dev/null \
    || python3 -m pip install --quiet --break-system-packages 'moto[server]' < /dev/null \
    || fail "pip install 'moto[server]'"
fi
python3 -c 'import moto, moto.server; print("moto", moto.__version__)' \
  || fail "moto is not importable after pip install"

step "Checking tools"
for tool in containerd ctr containerd-shim-runc-v2 runc skopeo buildah umoci docker-registry ip chromium protoc mkfs.xfs cargo; do
  command -v "$tool" > /dev/null || fail "$tool not found on PATH ($PATH)"
done
[[ -x /bin/busybox ]] || fail "/bin/busybox (busybox-static) missing"
containerd --version
runc --version | head -n 1
skopeo --version
docker-registry --version
cargo --version
rustc --version

if ! cargo fmt --version > /dev/null 2>&1 || ! cargo clippy --version > /dev/null 2>&1; then
  if command -v rustup > /dev/null; then
    step "rustup component add rustfmt clippy"
    rustup component add rustfmt clippy < /dev/null || true
  fi
fi
cargo fmt --version > /dev/null 2>&1 || fail "rustfmt is not installed (rustup component add rustfmt)"
cargo clippy --version > /dev/null 2>&1 || fail "clippy is not installed (rustup component add clippy)"
cargo fmt --version
cargo clippy --version

step "cargo fmt --all -- --check"
cargo fmt --all -- --check || fail "formatting differs: run cargo fmt --all"

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings || fail "clippy"

# The static supervisor binary for the `supervise = true` image tests, built once
# (crates/build/tests/supervise.rs builds it itself when this is unset).
step "bash scripts/build-supervisor.sh (static gantry-supervise)"
GANTRY_SUPERVISE_BINARY="$(bash scripts/build-supervisor.sh < /dev/null)" || fail "scripts/build-supervisor.sh"
export GANTRY_SUPERVISE_BINARY
ls -l "$GANTRY_SUPERVISE_BINARY"

step "cargo test --workspace --no-fail-fast"
cargo test --workspace --no-fail-fast < /dev/null || fail "cargo test"

# The README's first command, read from README.md and run as written (a release build, as a
# user's first run is), scaled down for CI by GANTRY_DEMO_SCALE (the demo's --scale). It must
# succeed and write its HTML report where the README says: ./gantry-demo.html.
step "the README's demo command, as the README writes it (GANTRY_DEMO_SCALE=20MB)"
demo_cmd="$(bash scripts/readme-commands.sh demo)" || fail "README.md has no demo command"
echo "$demo_cmd"
rm -f gantry-demo.html
GANTRY_DEMO_SCALE=20MB eval "$demo_cmd" < /dev/null || fail "the README's demo command: $demo_cmd"
[[ -s gantry-demo.html ]] || fail "the README's demo command wrote no gantry-demo.html"
rm -f gantry-demo.html

# The install layout `gantry build` relies on for `supervise = true`: both binaries side by side.
step "bash scripts/install.sh --profile dev (gantry and gantry-supervise side by side)"
prefix="$(mktemp -d "${TMPDIR:-/tmp}/gantry-install.XXXXXX")"
bash scripts/install.sh --profile dev --prefix "$prefix" < /dev/null || fail "scripts/install.sh"
"$prefix/bin/gantry" --version || fail "the installed gantry does not run"
"$prefix/bin/gantry-supervise" --help > /dev/null || fail "the installed gantry-supervise does not run"
rm -rf "$prefix"

# The benchmark harness at test scale, so it cannot rot: the debug gantry binary the CLI tests
# just built (no release build in CI; the timings are meaningless, the run checks that every
# benchmark figure is produced and that Gantry moves fewer bytes than the layer-level pipeline).
step "bash bench/run.sh --quick (benchmark harness at test scale)"
bash bench/run.sh --quick --gantry "${CARGO_TARGET_DIR:-target}/debug/gantry" \
  --out "${TMPDIR:-/tmp}/gantry-bench-quick/BENCHMARKS.md" < /dev/null || fail "bench/run.sh --quick"

# The fuzz targets of the parsers that face the network, a few seconds each over their
# committed corpus (fuzz/README.md): a crash found once stays found.
step "bash scripts/fuzz.sh (cargo fuzz on stable, FUZZ_SECONDS=${FUZZ_SECONDS:-5} per target)"
bash scripts/fuzz.sh < /dev/null || fail "scripts/fuzz.sh"

step "All checks passed"
