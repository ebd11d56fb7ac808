#!/usr/bin/env bash
# Idempotent setup for a fresh machine: a virtualenv in .venv with trustplane installed
# (editable), plus the test tools with --test. Safe to run any number of times; it only
# reinstalls when pyproject.toml changes.
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
[[ "${1:-}" == "--test" ]] && extras="[test]"

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "trustplane needs Python >= 3.11 (found: $("$python" --version 2>&1))" >&2
  exit 2
fi

if [[ ! -x .venv/bin/python ]]; then
  echo "==> creating virtualenv .venv" >&2
  "$python" -m venv .venv
fi

stamp=".venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)${extras:+-test}"
if [[ ! -f "$stamp" ]]; then
  echo "==> installing trustplane${extras} into .venv" >&2
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e ".${extras}"
  rm -f .venv/.installed-*
  touch "$stamp"
  # A test install satisfies a plain one too.
  if [[ -n "$extras" ]]; then
    touch "${stamp%-test}"
  fi
fi

# The test suite drives real proxies (nginx auth_request, Caddy forward_auth): Debian packages.
if [[ -n "$extras" ]]; then
  missing=()
  command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || missing+=(nginx-light)
  command -v caddy >/dev/null || missing+=(caddy)
  if ((${#missing[@]})); then
    if command -v apt-get >/dev/null; then
      echo "==> installing ${missing[*]} (Debian packages)" >&2
      sudo_cmd=""
      [[ "$(id -u)" != 0 ]] && sudo_cmd="sudo"
      $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 || {
        $sudo_cmd apt-get update -qq >/dev/null 2>&1
        $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
      }
    else
      echo "warning: ${missing[*]} missing and apt-get unavailable; their tests will be skipped" >&2
    fi
  fi
fi
