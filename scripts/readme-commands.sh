#!/usr/bin/env bash
# Prints a command of README.md's "On a fresh machine" section exactly as the README writes
# it, so CI runs what the README promises rather than a copy that could drift:
#   bash scripts/readme-commands.sh demo   # the first command: run the demo
#   bash scripts/readme-commands.sh test   # the second: run every test
# A command is an indented (4-space) block; blocks are numbered in the order they appear.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

case "${1:-}" in
  demo) n=1 ;;
  test) n=2 ;;
  *) echo "usage: $0 demo|test" >&2; exit 2 ;;
esac

cmd="$(awk -v want="$n" '
  /^## / { in_section = ($0 == "## On a fresh machine"); next }
  !in_section { next }
  /^    [^ ]/ {
    if (!in_block) { block++; in_block = 1 }
    if (block == want) { sub(/^    /, ""); print }
    next
  }
  { in_block = 0 }
' README.md)"

if [[ -z "$cmd" ]]; then
  echo "README.md: no command block number $n in the section \"## On a fresh machine\"" >&2
  exit 1
fi
printf '%s\n' "$cmd"
