#!/bin/sh
# Installs the long-poll peer of the "long-poll server" benchmark: nginx with
# the nchan module, from Debian's packages. The system nginx service is not
# started: the benchmark runs nginx with its own config (see README.md).
set -eu
export DEBIAN_FRONTEND=noninteractive
if ! dpkg -s nginx libnginx-mod-nchan >/dev/null 2>&1; then
    apt-get update -q
    apt-get install -y -q --no-install-recommends nginx libnginx-mod-nchan
fi
# Debian starts the service on install when it can; the benchmark needs the port free.
if command -v service >/dev/null 2>&1; then service nginx stop >/dev/null 2>&1 || true; fi
ls /usr/lib/nginx/modules/ngx_nchan_module.so
nginx -v
