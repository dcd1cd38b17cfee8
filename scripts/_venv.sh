# shellcheck shell=bash
# Shared by scripts/test and scripts/demo (sourced, not run): the virtualenv and the install
# of txpika into it.
#
# The caller sets ROOT (the checkout, and the current directory) and defines say and die;
# sourcing sets VENV (TXPIKA_VENV, default $ROOT/.venv), PY (PYTHON, default python3) and the
# pip/Python environment. Then:
#
#   txpika_venv                      create $VENV if it has no working pip (installing
#                                    Debian's python3-venv first when root); sets VPY
#   txpika_install SPEC MODULE...    pip install -e SPEC ('.[test]' or '.'), unless the last
#                                    install of SPEC (or of '.[test]', which includes '.')
#                                    was done with the same setup.cfg and pyproject.toml and
#                                    every MODULE imports

VENV="${TXPIKA_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
export PIP_DISABLE_PIP_VERSION_CHECK=1
export PYTHONUTF8=1

_txpika_venv_ok() { [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -c 'import pip' >/dev/null 2>&1; }

_txpika_make_venv() {
    rm -rf "$VENV"
    "$PY" -m venv "$VENV" >&2
}

txpika_venv() {
    command -v "$PY" >/dev/null 2>&1 || die "$PY not found; install Python 3.11 or newer (apt-get install python3)"
    "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || die "$("$PY" -V 2>&1) is too old: txpika needs Python 3.11 or newer (set PYTHON=/path/to/python3.11)"

    if ! _txpika_venv_ok; then
        say "creating virtualenv $VENV"
        if ! _txpika_make_venv; then
            # Debian and Ubuntu ship venv's ensurepip separately (python3-venv).
            if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
                local ver
                ver="$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
                say "python venv is incomplete; installing python3-venv (and python${ver}-venv if it exists)"
                apt-get update -qq >&2 || true
                DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >&2 || true
                DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "python${ver}-venv" >&2 || true
                _txpika_make_venv || die "could not create $VENV even after installing python3-venv"
            else
                die "could not create a virtualenv; on Debian/Ubuntu run: sudo apt-get install python3-venv"
            fi
        fi
        _txpika_venv_ok || die "$VENV has no working pip"
    fi
    VPY="$VENV/bin/python"
}

# The stamp of an install of SPEC holds the hash of setup.cfg + pyproject.toml it was done
# with. ('.[test]' keeps the stamp name scripts/test always used.)
_txpika_stamp() {
    case "$1" in
        ".[test]") printf '%s\n' "$VENV/.txpika-install-stamp" ;;
        .) printf '%s\n' "$VENV/.txpika-install-stamp-base" ;;
        *) die "no install stamp for '$1'" ;;
    esac
}

txpika_install() {
    local spec="$1"
    shift
    local stamp want have=""
    stamp="$(_txpika_stamp "$spec")"
    want="$(cat setup.cfg pyproject.toml 2>/dev/null | "$VPY" -c 'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')"
    [[ -f "$stamp" ]] && have="$(cat "$stamp")"
    if [[ "$have" != "$want" && "$spec" != ".[test]" && -f "$(_txpika_stamp ".[test]")" ]]; then
        have="$(cat "$(_txpika_stamp ".[test]")")"  # the test install includes everything
    fi
    local modules_py
    modules_py="import importlib.util as u, sys; sys.exit(not all(u.find_spec(m) for m in sys.argv[1:]))"
    if [[ "$have" != "$want" ]] || ! "$VPY" -c "$modules_py" "$@" >/dev/null 2>&1; then
        if [[ "$spec" == ".[test]" ]]; then
            say "installing txpika and its test dependencies into $VENV (pip install -e '$spec')"
        else
            say "installing txpika into $VENV (pip install -e '$spec')"
        fi
        "$VPY" -m pip install -q -e "$spec" || die "pip install -e '$spec' failed"
        printf '%s\n' "$want" >"$stamp"
    fi
}
