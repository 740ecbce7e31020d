#!/usr/bin/env bash
# Runs every edgenet test on a fresh Debian machine, as root: it installs
# what is missing (nftables, iproute2, ping, Python's moto and botocore),
# then checks formatting and lints, then runs the whole suite, including
# the network-namespace and moto tests, then the systemd, packaging and
# README checks (the packages are also booted under real systemd in a
# container).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '==> %s\n' "$*" >&2; }

install_system_packages() {
  local wanted=(nftables iproute2 iputils-ping procps python3-pip systemd man-db dpkg dpkg-dev debhelper fakeroot lintian openssl etcd-server protobuf-compiler curl util-linux systemd-container)
  local missing=()
  for package in "${wanted[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

install_python_packages() {
  if ! python3 -c 'import moto.server, botocore, flask' 2>/dev/null; then
    log "installing moto[server] and botocore from PyPI"
    python3 -m pip install --quiet --disable-pip-version-check 'moto[server]' botocore \
      || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages 'moto[server]' botocore
  fi
}

run_extra_setup() {
  # Crates with their own needs ship an idempotent setup script.
  for script in auth/tests/setup-python.sh tests/setup.sh; do
    if [ -f "$script" ]; then
      log "running $script"
      bash "$script"
    fi
  done
}

install_test_runner() {
  # nextest runs each test in its own process, in parallel; cargo test is
  # the fallback when it cannot be installed.
  if ! cargo nextest --version >/dev/null 2>&1; then
    log "installing cargo-nextest from crates.io"
    cargo install --locked --quiet cargo-nextest || true
  fi
}

install_system_packages
install_python_packages
install_test_runner
run_extra_setup

log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
run_tests() {
  if cargo nextest --version >/dev/null 2>&1; then
    log "cargo nextest run"
    cargo nextest run "$@"
  else
    log "cargo-nextest is not installed and could not be: cargo test instead"
    cargo test "$@"
  fi
}

run_tests --workspace --features edgenet-agent/root-tests --no-fail-fast

log "systemd units: verify and security exposure"
bash scripts/check-systemd.sh
log "the server unit, started as its user with its credentials"
bash scripts/check-server-unit.sh
log "Debian packages"
built=$(bash scripts/build-deb.sh dev)
mapfile -t packages < <(grep -v -- -dbgsym <<<"$built")
for name in edgenetd edgenet-server; do
  package=$(printf '%s\n' "${packages[@]}" | grep -E "/${name}_[^/]*\.deb$")
  dpkg -c "$package" | awk '{print $6}' | grep -E '^\./(usr/bin|lib/systemd|usr/share/man)/'
done
log "lintian (errors fail; warnings are listed)"
bash scripts/check-lintian.sh "${packages[@]}"
log "both packages under real systemd (systemd-nspawn --boot)"
bash scripts/check-systemd-boot.sh "${packages[@]}"
log "the README's first command, with --once"
cargo run --release -- run --dry-run --model examples/cloud.json --node nc-1 --once
