#!/usr/bin/env bash
# Builds `gantry-supervise`, the supervisor alone, as a static executable (glibc with
# crt-static: no ELF interpreter, no shared libraries), for images built with
# `supervise = true` in gantry.toml. Prints the path of the binary.
#
# Usage: bash scripts/build-supervisor.sh [OUT]
#   OUT      copy the binary there too (and print that path instead)
# Env: CARGO_TARGET_DIR (default: target), CARGO, extra RUSTFLAGS.
#
# The target triple is passed explicitly so RUSTFLAGS apply to the binary only and build
# scripts and proc macros stay dynamically linked host programs. The `static-dns` feature
# resolves host names in Rust (hickory: /etc/hosts, then the servers of /etc/resolv.conf),
# because static glibc's getaddrinfo would dlopen libnss_* modules from the image for any
# source other than files/dns that the image's /etc/nsswitch.conf names.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo="${CARGO:-cargo}"
out="${1:-}"
target="$(rustc -vV | sed -n 's/^host: //p')"
case "$target" in
  *-linux-gnu*) ;;
  *) echo "build-supervisor.sh: host $target is not a glibc Linux target" >&2; exit 1 ;;
esac
target_dir="${CARGO_TARGET_DIR:-target}"

RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
  "$cargo" build --profile supervisor --target "$target" \
  -p gantry-supervise --bin gantry-supervise --features static-dns >&2

bin="$target_dir/$target/supervisor/gantry-supervise"
[[ -x "$bin" ]] || { echo "build-supervisor.sh: $bin was not built" >&2; exit 1; }
# A static executable has no PT_INTERP program header.
if command -v readelf > /dev/null && readelf -lW "$bin" | grep -q 'INTERP'; then
  echo "build-supervisor.sh: $bin is dynamically linked" >&2
  exit 1
fi
if [[ -n "$out" ]]; then
  mkdir -p "$(dirname "$out")"
  cp "$bin" "$out.tmp.$$"
  mv -f "$out.tmp.$$" "$out"
  bin="$out"
fi
echo "$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"
