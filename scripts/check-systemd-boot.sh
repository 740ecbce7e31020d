#!/usr/bin/env bash
# Boots real systemd (systemd-nspawn --boot) in a container whose /usr is an
# overlay of this machine's, with its own network namespace, and there
# installs both packages with dpkg and drives them through their units
# (scripts/check-systemd-boot-inside.sh): the server over HTTPS as its user with
# its credentials, the agent applying the example model's node view
# from the server, re-applying after nftables.service restarts and reloads,
# a restart on upgrade, stop on remove, and purge. Needs root and
# systemd-container; nothing is downloaded. Bounded: the container is
# killed after 170 s.
#
#   scripts/check-systemd-boot.sh [edgenetd_*.deb edgenet-server_*.deb]
#   (without packages it builds them with scripts/build-deb.sh dev)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -eq 0 ]; then
  built=$(bash scripts/build-deb.sh dev)
  mapfile -t packages < <(grep -v -- -dbgsym <<<"$built")
else
  packages=("$@")
fi

work=$(mktemp -d /var/tmp/edgenet-boot.XXXXXX)
trap 'rm -rf "$work"' EXIT
root=$work/root
mkdir -p "$root"/{usr,tmp,proc,sys,dev,run,var/lib,var/log,var/tmp} "$work/usr-upper" "$work/test/packages"
for dir in bin lib sbin lib64; do
  [ -L "/$dir" ] && ln -s "$(readlink "/$dir")" "$root/$dir"
done
# This machine's configuration and package database, which describe its
# /usr, with no service enabled but the test's.
cp -a /etc "$root/etc"
rm -f "$root/etc/os-release" "$root/etc/machine-id"
cp -L /etc/os-release "$root/etc/os-release"
: > "$root/etc/machine-id"
find "$root/etc/systemd/system" -mindepth 1 -maxdepth 1 -name '*.wants' -exec rm -rf {} +
cp -a /var/lib/dpkg "$root/var/lib/dpkg"

cp "${packages[@]}" "$work/test/packages/"
cp scripts/check-systemd-boot-inside.sh "$work/test/inside.sh"
cp examples/cloud.json "$work/test/cloud.json"
cp systemd/server-credentials.example.toml "$work/test/server-credentials.toml"
cp systemd/node-credentials.example "$work/test/node-credentials"
mkdir -p "$work/results" "$root/etc/systemd/system/multi-user.target.wants"
cat > "$root/etc/systemd/system/edgenet-boot-test.service" <<'UNIT'
[Unit]
Description=edgenet packages under systemd
After=multi-user.target
[Service]
Type=oneshot
ExecStart=/bin/sh -c 'sh /edgenet-test/inside.sh > /edgenet-results/log 2>&1; echo $? > /edgenet-results/rc'
ExecStartPost=/bin/systemctl --no-block poweroff
TimeoutStartSec=150
UNIT
ln -s ../edgenet-boot-test.service "$root/etc/systemd/system/multi-user.target.wants/"

status=0
timeout --kill-after=10 170 systemd-nspawn --quiet --directory="$root" --register=no --keep-unit \
  --overlay="/usr:$work/usr-upper:/usr" --private-network --console=pipe \
  --bind-ro="$work/test:/edgenet-test" --bind="$work/results:/edgenet-results" \
  --boot >"$work/console.log" 2>&1 || status=$?
cat "$work/results/log" 2>/dev/null || true
if [ "$(cat "$work/results/rc" 2>/dev/null)" != 0 ]; then
  echo "check-systemd-boot: FAILED (nspawn exit $status); the container's journal:" >&2
  journalctl -D "$root/var/log/journal" --no-pager -u edgenetd -u edgenet-server -u nftables 2>/dev/null | tail -60 >&2 || cat "$work/console.log" >&2
  exit 1
fi
echo "check-systemd-boot: ok"
