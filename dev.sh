#!/usr/bin/env bash
# Set up (once) and run fedaudit from a checkout. Needs only Python >= 3.11.
# The first run creates .venv and installs fedaudit with its test tools (a few minutes).
#   ./dev.sh demo [fedaudit demo options]   the whole federation on synthetic data
#   ./dev.sh test [pytest options]          lint, then the test suite
#   ./dev.sh fedaudit ...                   any fedaudit command
#   ./dev.sh help                           this text
set -euo pipefail
cd "$(dirname "$0")"

PYTHON="${PYTHON:-python3}"
VENV="${FEDAUDIT_VENV:-.venv}"

usage() {
  # The header comment above, without the shebang and the leading "# ".
  sed -n '2,/^set -euo/p' "$0" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//'
}

setup() {
  if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "fedaudit needs Python >= 3.11")'
    "$PYTHON" -m venv "$VENV"
  fi
  local stamp="$VENV/.fedaudit-installed"
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "dev.sh: installing fedaudit and its test tools into $VENV (the first time takes a few minutes)" >&2
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -e ".[test]"
    touch "$stamp"
  fi
}

cmd="${1:-help}"
[ $# -gt 0 ] && shift
case "$cmd" in
  demo)
    setup
    exec "$VENV/bin/fedaudit" demo "$@"
    ;;
  test)
    setup
    "$VENV/bin/ruff" check .
    "$VENV/bin/ruff" format --check .
    set +e
    "$VENV/bin/python" -m pytest "$@"
    rc=$?
    set -e
    if [ "$rc" -eq 5 ]; then
      echo "dev.sh: pytest collected no tests; that is a failure" >&2
      exit 1
    fi
    exit "$rc"
    ;;
  fedaudit)
    setup
    exec "$VENV/bin/fedaudit" "$@"
    ;;
  help | -h | --help)
    usage
    ;;
  *)
    echo "dev.sh: unknown command '$cmd'" >&2
    usage >&2
    exit 2
    ;;
esac
