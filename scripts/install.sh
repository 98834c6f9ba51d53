#!/usr/bin/env bash
# Installs `gantry` and the static `gantry-supervise` side by side in PREFIX/bin, where
# `gantry build` looks for the supervisor of images built with `supervise = true`.
#
# Usage: bash scripts/install.sh [--prefix DIR] [--profile release|dev]
#   --prefix   install into DIR/bin (default /usr/local)
#   --profile  cargo profile of `gantry` (default release; the supervisor always uses its own
#              small `supervisor` profile)
# Env: CARGO_TARGET_DIR (default: target), CARGO.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo="${CARGO:-cargo}"
prefix=/usr/local
profile=release
while [[ $# -gt 0 ]]; do
  case "$1" in
    --prefix) prefix="${2:?--prefix needs a directory}"; shift 2 ;;
    --profile) profile="${2:?--profile needs release or dev}"; shift 2 ;;
    -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "install.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$profile" in
  release) dir=release ;;
  dev) dir=debug ;;
  *) echo "install.sh: --profile must be release or dev, not $profile" >&2; exit 2 ;;
esac
target_dir="${CARGO_TARGET_DIR:-target}"

"$cargo" build --profile "$profile" -p gantry-cli --bin gantry >&2
supervisor="$(bash scripts/build-supervisor.sh < /dev/null)"

mkdir -p "$prefix/bin"
install -m 0755 "$target_dir/$dir/gantry" "$prefix/bin/gantry"
install -m 0755 "$supervisor" "$prefix/bin/gantry-supervise"
echo "$prefix/bin/gantry"
echo "$prefix/bin/gantry-supervise"
