#!/bin/sh
# Runs inside the container booted by scripts/check-systemd-boot.sh, as a
# unit of its systemd (PID 1). Installs both packages, starts the server and
# the agent through their units, and checks each step; the last line is
# PASS or the step that failed.
set -eu
t=/edgenet-test
step() { echo "--- $*"; }
fail() { echo "FAIL: $*"; exit 1; }
# Bounded waits: $1 tries of 0.2 s for the command after it to succeed.
wait_for() {
  n=$1; shift
  while ! "$@" >/dev/null 2>&1; do
    n=$((n - 1)); [ "$n" -gt 0 ] || return 1; sleep 0.2
  done
}
invocation() { systemctl show -P InvocationID edgenetd.service; }
table_present() { nft list table inet edgenet >/dev/null 2>&1; }
restarted_and_applied() {
  [ "$(invocation)" != "$1" ] && systemctl is-active -q edgenetd.service && table_present
}

# This machine's /usr, which the container overlays, may hold a
# policy-rc.d that forbids maintainer scripts to start or restart services
# (as container images do); the upgrade step needs them to.
rm -f /usr/sbin/policy-rc.d

step "install both packages"
dpkg -i "$t"/packages/edgenetd_*.deb "$t"/packages/edgenet-server_*.deb
getent passwd edgenet >/dev/null || fail "no edgenet user"
getent passwd edgenet-server >/dev/null || fail "no edgenet-server user"
[ "$(stat -c '%a %U %G' /etc/edgenet)" = "750 root edgenet" ] || fail "/etc/edgenet: $(stat -c '%a %U %G' /etc/edgenet)"
[ "$(stat -c '%a %U %G' /etc/edgenet-server)" = "750 root edgenet-server" ] || fail "/etc/edgenet-server"
[ "$(stat -c '%a %U %s' /etc/edgenet-server/token.key)" = "600 root 32" ] || fail "token.key"
[ -s /etc/edgenet-server/tls/server.crt ] || fail "no TLS certificate"
systemctl is-enabled -q edgenetd.service && fail "edgenetd.service enabled at install"
systemctl is-active -q edgenetd.service && fail "edgenetd.service started at install"

step "edgenet-server.service: the operator's two files, then start"
install -m 0640 -g edgenet-server "$t/cloud.json" /etc/edgenet-server/cloud.json
install -m 0600 "$t/server-credentials.toml" /etc/edgenet-server/server-credentials.toml
systemctl start edgenet-server.service
wait_for 100 curl -sf --cacert /etc/edgenet-server/tls/ca.crt https://localhost:8773/healthz \
  || { systemctl status --no-pager edgenet-server.service; fail "server does not answer over HTTPS"; }
[ "$(systemctl show -P User edgenet-server.service)" = edgenet-server ] || fail "server user"

step "edgenetd.service: the node's credentials and the server's CA, then start"
install -m 0600 -o edgenet -g edgenet "$t/node-credentials" /etc/edgenet/node-credentials
install -m 0644 /etc/edgenet-server/tls/ca.crt /etc/edgenet/ca.pem
sed -i -e 's|https://clc.example.internal:8773/|https://localhost:8773/|' \
  -e 's|^# ca_file = |ca_file = |' /etc/edgenet/edgenetd.toml
# The devices the example model's node nc-1 puts addresses on.
ip link add br0 type bridge && ip link set br0 up
# A dummy device would do; the dummy module may be missing, a bridge is not.
{ ip link add eth0 type dummy 2>/dev/null || ip link add eth0 type bridge; } && ip link set eth0 up
# Type=notify: start returns once the kernel is read (READY comes before
# the first view, so that a node whose controller is down does not flap);
# the view is applied just after.
timeout 60 systemctl start edgenetd.service \
  || { systemctl status --no-pager edgenetd.service; journalctl -u edgenetd --no-pager | tail -30; fail "edgenetd did not start"; }
wait_for 100 table_present || fail "no table inet edgenet after the start"
systemctl show -P StatusText edgenetd.service

step "nftables.service restart flushes the ruleset; edgenetd re-applies"
before=$(invocation)
started=$(date +%s.%N)
systemctl restart nftables.service
wait_for 150 restarted_and_applied "$before" || fail "edgenetd not restarted, or table not back, after nftables restart"
echo "table inet edgenet back $(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }') s after the restart began"
step "nftables.service reload"
before=$(invocation)
systemctl reload nftables.service
wait_for 150 restarted_and_applied "$before" || fail "not re-applied after nftables reload"

step "upgrade (the same version again): a running edgenetd is restarted"
before=$(invocation)
dpkg -i "$t"/packages/edgenetd_*.deb
wait_for 150 restarted_and_applied "$before" || fail "not restarted on upgrade"

step "remove: the unit stops, the kernel state stays"
dpkg -r edgenetd
systemctl is-active -q edgenetd.service && fail "edgenetd still active after remove"
table_present || fail "remove flushed the table"
step "purge: configuration and users go"
dpkg -P edgenetd edgenet-server
[ ! -e /etc/edgenet ] || fail "/etc/edgenet left after purge"
[ ! -e /etc/edgenet-server ] || fail "/etc/edgenet-server left after purge"
getent passwd edgenet >/dev/null && fail "edgenet user left after purge"
getent group edgenet-server >/dev/null && fail "edgenet-server group left after purge"
echo PASS
