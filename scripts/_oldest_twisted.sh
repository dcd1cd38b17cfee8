#!/usr/bin/env bash
# Run by scripts/test: the unit tests (no broker, no private node, no cluster, not slow)
# against Twisted FLOOR.* in a virtualenv of their own, .venv-oldest-twisted (or
# TXPIKA_OLDEST_VENV), created and installed once per setup.cfg/pyproject.toml; bounded by
# TXPIKA_OLDEST_TIMEOUT (default 5m).
#
#   bash scripts/_oldest_twisted.sh 25.5 [pytest arguments]
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1
floor="$1"
shift

say() { printf 'scripts/test (oldest Twisted): %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

export TXPIKA_VENV="${TXPIKA_OLDEST_VENV:-$ROOT/.venv-oldest-twisted}"
# shellcheck source=scripts/_venv.sh
source "$ROOT/scripts/_venv.sh"
txpika_venv

stamp="$VENV/.txpika-oldest-stamp"
want="$(cat setup.cfg pyproject.toml | "$VPY" -c 'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')-$floor"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
    say "installing txpika's test dependencies with Twisted==$floor.* into $VENV"
    "$VPY" -m pip install -q -e '.[test]' "Twisted[tls]==$floor.*" \
        || die "pip install -e '.[test]' Twisted[tls]==$floor.* failed"
    printf '%s\n' "$want" >"$stamp"
fi
"$VPY" -c 'import twisted; print("Twisted", twisted.__version__)' >&2

# Behaviour that depends on the Twisted release, not on txpika (each is said in the guides):
# - twistd exits with status 1 on a bad command line only from Twisted 26.10 on (before, it
#   prints the usage error and exits 0): tests/test_twistd.py and tests/test_health.py
#   check that status;
# - Twisted's optionsForClientTLS has type annotations only from 26.x on, so mypy --strict
#   of user code that reaches it differs: tests/test_typing.py.
deselect=()
if "$VPY" -c 'import sys, twisted; from incremental import Version; v = twisted.version; sys.exit(not ((v.major, v.minor) < (26, 10)))' 2>/dev/null; then
    deselect+=(--deselect "tests/test_twistd.py::test_bad_command_line_exits_at_once_without_connecting")
    deselect+=(--deselect "tests/test_health.py::test_a_bad_health_endpoint_is_refused_before_connecting")
    deselect+=(--deselect "tests/test_typing.py::test_user_code_sees_typed_results")
fi

timeout --kill-after=30s "${TXPIKA_OLDEST_TIMEOUT:-5m}" "$VPY" -m pytest -q -p no:cacheprovider \
    -m "not broker and not private_broker and not cluster and not slow" "${deselect[@]}" "$@"
rc=$?
case $rc in
    0) exit 0 ;;
    124|137) say "did not finish within ${TXPIKA_OLDEST_TIMEOUT:-5m}"; exit 1 ;;
    *) say "pytest exited with $rc"; exit 1 ;;
esac
