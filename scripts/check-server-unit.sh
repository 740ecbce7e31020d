#!/usr/bin/env bash
# Starts edgenet-server the way edgenet-server.service does, without systemd:
# the directory from edgenet-server.tmpfiles, the files the package's
# edgenet-server-setup makes, the credentials directory systemd builds from
# the unit's LoadCredential= lines (files 0400 owned by the service user),
# and the unit's ExecStart, run as a throwaway uid and gid standing for the
# unit's User= and Group=. It then checks that the server answers /healthz
# over HTTPS with the package's CA, and that the same start without the
# unit's group is refused (Permission denied on the model), which is how
# the server failed when the unit ran it as a dynamic user.
#
#   scripts/check-server-unit.sh      (as root)
set -euo pipefail
cd "$(dirname "$0")/.."

unit=systemd/edgenet-server.service
conf_dir=/etc/edgenet-server
fail() { echo "check-server-unit: $*" >&2; exit 1; }

unused_id() {
  local id=$1 db=$2
  while getent "$db" "$id" >/dev/null; do id=$((id + 1)); done
  echo "$id"
}
uid=$(unused_id 61200 passwd)
gid=$(unused_id 61200 group)
other_gid=$(unused_id $((gid + 1)) group)

cargo build -q -p edgenet-server --bin edgenet-server
binary=$PWD/target/debug/edgenet-server

root=$(mktemp -d)
server_pid=
cleanup() {
  if [ -n "$server_pid" ]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$root"
}
trap cleanup EXIT
chmod 0755 "$root"
etc=$root$conf_dir

# The configuration directory exactly as tmpfiles.d makes it.
read -r kind path mode owner group _ < <(grep -v '^#' systemd/edgenet-server.tmpfiles | grep "$conf_dir")
[ "$kind $path $owner $group" = "d $conf_dir root edgenet-server" ] || fail "unexpected tmpfiles line"
install -d -m "$mode" -o root -g "$gid" "$etc"
sh systemd/edgenet-server-setup "$etc"
# What the operator writes (README, "The server's first start").
install -m 0640 -o root -g "$gid" examples/cloud.json "$etc/cloud.json"
install -m 0600 -o root -g root systemd/server-credentials.example.toml "$etc/server-credentials.toml"

[ "$(stat -c '%a %s' "$etc/token.key")" = "600 32" ] || fail "token.key is not 32 bytes with mode 0600"

# The credentials directory: systemd copies every LoadCredential= source
# into it, owned by the service user, mode 0400.
creds=$root/run/credentials/edgenet-server.service
install -d -m 0700 "$creds"
while IFS=: read -r name source; do
  install -m 0400 -o "$uid" -g "$gid" "$root$source" "$creds/$name"
done < <(sed -n 's/^LoadCredential=//p' "$unit")
chown "$uid:$gid" "$creds"
chmod 0500 "$creds"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
exec_start=$(sed -n 's/^ExecStart=//p' "$unit")
exec_start=${exec_start//\$\{CREDENTIALS_DIRECTORY\}/$creds}
exec_start=${exec_start//$conf_dir/$etc}
exec_start=${exec_start//\/usr\/bin\/edgenet-server/$binary}
exec_start=$(sed "s/--listen [^ ]*/--listen 127.0.0.1:$port/" <<<"$exec_start")
read -r -a command <<<"$exec_start"

# Runs as the service would. Called in a subshell (`(as_service …)`), its
# exec makes that subshell the server, so `$!` is the server's pid.
as_service() {
  local group=$1
  shift
  cd / && exec setpriv --reuid="$uid" --regid="$group" --clear-groups --inh-caps=-all "$@"
}

# Without the unit's group (a dynamic user has none) the model is unreadable.
if (as_service "$other_gid" "${command[@]}") >"$root/refused.log" 2>&1; then
  fail "the server started without the group that may read the model"
fi
grep -q "Permission denied" "$root/refused.log" || { cat "$root/refused.log"; fail "refused, but not for the model's permissions"; }
echo "without Group=edgenet-server: refused: $(grep -m1 "Permission denied" "$root/refused.log")"

(as_service "$gid" "${command[@]}") >"$root/server.log" 2>&1 &
server_pid=$!
health=
for _ in $(seq 100); do
  health=$(curl -s --cacert "$etc/tls/ca.crt" -o /dev/null -w '%{http_code}' "https://localhost:$port/healthz" || true)
  [ "$health" = 200 ] && break
  kill -0 "$server_pid" 2>/dev/null || break
  sleep 0.1
done
if [ "$health" != 200 ]; then
  cat "$root/server.log"
  fail "the server did not answer /healthz over HTTPS (last status: ${health:-none})"
fi
echo "as the unit runs it (uid $uid, gid $gid, credentials 0400): https://localhost:$port/healthz 200"

# The packaged agent configuration talks to this server: HTTPS, on its port.
endpoint=$(sed -n 's/^endpoints = \["\([^"]*\)".*/\1/p' systemd/edgenetd.toml)
case "$endpoint" in
  https://*:8773/) echo "packaged agent endpoint $endpoint matches the unit's HTTPS listener" ;;
  *) fail "packaged agent endpoint $endpoint does not match the unit (https, port 8773)" ;;
esac
grep -q -- '--listen \[::\]:8773 .*--tls-cert' "$unit" || fail "the unit does not serve HTTPS on 8773"
