#!/usr/bin/env bash
# Checks the systemd units: `systemd-analyze verify` (with the man pages the
# units name, generated from the clap definitions) and the offline security
# exposure, which must stay at or under each unit's threshold; and the
# nftables.service drop-in, verified with Debian's nftables.service, where
# any message (an unknown key is only a warning to systemd) fails.
set -euo pipefail
cd "$(dirname "$0")/.."

declare -A max_exposure=([edgenetd]=2.5 [edgenet-server]=2.0)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cargo build -q -p edgenet-agent -p edgenet-server --bins
cargo run -q -p edgenet-xtask -- man "$work/man/man8"

status=0
for unit in edgenetd edgenet-server; do
  # verify wants the ExecStart binary to exist: point it at the one just built.
  sed "s#/usr/bin/$unit#$PWD/target/debug/$unit#" "systemd/$unit.service" > "$work/$unit.service"
  if MANPATH="$work/man" systemd-analyze verify "$work/$unit.service"; then
    echo "verify $unit.service: ok"
  else
    echo "verify $unit.service: FAILED"; status=1
  fi
  exposure=$(systemd-analyze security --offline=yes "systemd/$unit.service" 2>/dev/null \
    | sed -n 's/.*Overall exposure level for .*: \([0-9.]*\).*/\1/p')
  limit=${max_exposure[$unit]}
  if awk -v e="$exposure" -v l="$limit" 'BEGIN { exit !(e != "" && e <= l) }'; then
    echo "security $unit.service: exposure $exposure (at most $limit): ok"
  else
    echo "security $unit.service: exposure ${exposure:-unknown} is above $limit: FAILED"; status=1
  fi
done
nftables_unit=/lib/systemd/system/nftables.service
if [ -f "$nftables_unit" ]; then
  mkdir -p "$work/units/nftables.service.d"
  cp "$nftables_unit" "$work/units/"
  cp systemd/nftables-edgenetd.conf "$work/units/nftables.service.d/edgenetd.conf"
  messages=$(SYSTEMD_UNIT_PATH="$work/units:" systemd-analyze verify "$work/units/nftables.service" 2>&1) || status=1
  if [ -z "$messages" ]; then
    echo "verify nftables.service with the edgenetd drop-in: ok"
  else
    printf '%s\n' "$messages"; echo "verify nftables.service with the edgenetd drop-in: FAILED"; status=1
  fi
else
  echo "verify nftables.service drop-in: skipped, no $nftables_unit (install nftables)"
fi
exit $status
