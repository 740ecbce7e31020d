#!/usr/bin/env bash
# Installs what the end-to-end suite needs (idempotent, quiet):
# iproute2 (ip netns, veth, bridge), nftables (nft), iputils-ping (ping),
# procps (sysctl). Run as root; CI calls it before the tests.
set -euo pipefail

need=()
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v nft >/dev/null 2>&1 || need+=(nftables)
command -v ping >/dev/null 2>&1 || need+=(iputils-ping)
command -v sysctl >/dev/null 2>&1 || need+=(procps)

if ((${#need[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# The bridge hooks (bridge-nf-call-iptables) need br_netfilter; where it is
# a module rather than built in, load it. Harmless when built in or absent.
if [ ! -d /proc/sys/net/bridge ] && command -v modprobe >/dev/null 2>&1; then
    modprobe br_netfilter 2>/dev/null || true
fi
