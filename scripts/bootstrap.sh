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

# xds-protos (Envoy's types) ships an older copy of opentelemetry-proto's modules, and the
# package pip installs last wins: put opentelemetry-proto's own back when they were replaced,
# or the OTLP exporter of `[tracing]` cannot load.
if ! .venv/bin/python -c 'from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope' 2>/dev/null; then
  otel_proto=$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("opentelemetry-proto"))')
  echo "==> reinstalling opentelemetry-proto ${otel_proto} over the copy xds-protos ships" >&2
  .venv/bin/python -m pip install --quiet --force-reinstall --no-deps "opentelemetry-proto==${otel_proto}"
fi

apt_install() {
  # Debian packages, installed once; false if they could not be (or the user opted out).
  # Usage: apt_install "why they are needed" package...
  local why=$1
  shift
  if [[ "${TRUSTPLANE_NO_APT:-}" == 1 ]]; then
    echo "==> not installing $* (TRUSTPLANE_NO_APT=1): $why" >&2
    return 1
  fi
  command -v apt-get >/dev/null || return 1
  local sudo_cmd=""
  [[ "$(id -u)" != 0 ]] && sudo_cmd="sudo"
  echo "==> installing Debian packages $* — $why (opt out: TRUSTPLANE_NO_APT=1)" >&2
  $sudo_cmd apt-get install -y -qq "$@" >/dev/null 2>&1 || {
    $sudo_cmd apt-get update -qq >/dev/null 2>&1
    $sudo_cmd apt-get install -y -qq "$@" >/dev/null 2>&1
  }
}

# The test suite drives real proxies (nginx auth_request, Caddy forward_auth): Debian packages.
if [[ -n "$extras" ]]; then
  missing=()
  command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || missing+=(nginx-light)
  command -v caddy >/dev/null || missing+=(caddy)
  if ((${#missing[@]})); then
    apt_install "the test suite drives real proxies (nginx auth_request, Caddy forward_auth)" \
      "${missing[@]}" ||
      echo "warning: ${missing[*]} not installed; their tests will be skipped" >&2
  fi
fi

# The pages under /ui are tested in a real browser: Debian's chromium through chromium-driver
# (Selenium). Never a downloaded browser.
if [[ -n "$extras" ]]; then
  missing=()
  command -v chromium >/dev/null || missing+=(chromium)
  command -v chromedriver >/dev/null || missing+=(chromium-driver)
  if ((${#missing[@]})); then
    apt_install "the pages under /ui are tested in a real browser (tests/web)" "${missing[@]}" ||
      echo "warning: ${missing[*]} not installed; tests/web fails (skips with TRUSTPLANE_NO_APT=1)" >&2
  fi
fi

# tests/deploy: promtool checks and unit-tests the shipped alert rules (deploy/prometheus);
# the image test (slow) builds the container image from Debian packages with mmdebstrap and
# umoci, no registry needed. kubectl renders the Kustomize overlays; Debian 12's
# kubernetes-client (1.20, kustomize 2) is too old for them, so it is not installed here.
if [[ -n "$extras" ]]; then
  missing=()
  command -v promtool >/dev/null || missing+=(prometheus)
  command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
  command -v umoci >/dev/null || missing+=(umoci)
  if ((${#missing[@]})); then
    apt_install "tests/deploy checks the alert rules, the manifests and the container image" \
      "${missing[@]}" ||
      echo "warning: ${missing[*]} not installed; their tests will be skipped" >&2
  fi
fi

# The compiled ext_authz gRPC front (src/trustplane/enforcement/native/), built against
# Debian's libgrpc++ into .venv/bin. Without it `serve` uses grpcio's server (same answers,
# several times the cost per call).
front_src=src/trustplane/enforcement/native/extauthz_front.cc
front_bin=.venv/bin/trustplane-extauthz
front_stamp=".venv/.extauthz-$(sha256sum "$front_src" | cut -c1-16)"
if [[ ! -f "$front_stamp" || ! -x "$front_bin" ]]; then
  if ! command -v g++ >/dev/null || ! command -v pkg-config >/dev/null ||
    ! pkg-config --exists grpc++ 2>/dev/null; then
    apt_install "to build the compiled ext_authz gRPC front (optional; grpcio serves without it)" \
      g++ pkg-config libgrpc++-dev || true
  fi
  echo "==> building trustplane-extauthz (g++, libgrpc++)" >&2
  # shellcheck disable=SC2046  # pkg-config prints several flags
  if g++ -O2 -std=c++17 -Wall -Wextra -Werror -o "$front_bin.new" "$front_src" \
    $(pkg-config --cflags --libs grpc++ 2>/dev/null) 2>.venv/extauthz-build.log; then
    mv "$front_bin.new" "$front_bin"
    rm -f .venv/.extauthz-*
    touch "$front_stamp"
  else
    rm -f "$front_bin.new"
    echo "warning: trustplane-extauthz not built (.venv/extauthz-build.log); ext_authz gRPC" \
      "will be served by grpcio" >&2
  fi
fi
