#!/usr/bin/env bash
# Installs what the auth tests need from Python: botocore (an independent
# SigV4 signer) and moto's server (an STS/IAM peer). Idempotent and quiet;
# called by the CI script before `cargo test`.
set -euo pipefail
PY="${PYTHON:-python3}"
if "$PY" -c 'import botocore, moto.server' >/dev/null 2>&1; then
    exit 0
fi
pip_install() {
    "$PY" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
        "$@" 'moto[server]' botocore
}
# Debian's system Python is "externally managed": retry with the override.
pip_install 2>/dev/null || pip_install --break-system-packages
"$PY" -c 'import botocore, moto.server' >/dev/null
