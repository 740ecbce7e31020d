#!/bin/sh
# Peak RSS of one `edgenetd apply` on the Linux dataplane, the agent's own
# (VmHWM, sampled every 5 ms until it exits) apart from the `nft` children's
# (each nft run under /usr/bin/time). `/usr/bin/time edgenetd apply` alone
# reports the larger of the two: wait4's ru_maxrss covers reaped children,
# and nft's own JSON handling peaks at ~270 MiB for a full 10k apply.
#
# usage (root): sh agent/benches/apply-rss.sh [EDGENETD] [INSTANCES]
#   makes a model with gen-model --nodes 1 --instances N --groups N/10,
#   then in a fresh network namespace (br0, eth0): a first apply, then a
#   no-change apply (read back + diff, nothing written).
set -eu
edgenetd=${1:-target/release/edgenetd}
instances=${2:-10000}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$edgenetd" gen-model --nodes 1 --instances "$instances" --groups $((instances / 10)) >"$work/model.json"
mkdir "$work/bin"
cat >"$work/bin/nft" <<WRAP
#!/bin/sh
exec /usr/bin/time -a -o "$work/nft.log" -f "  nft \$*: %M KiB, %e s" $(command -v nft) "\$@"
WRAP
chmod +x "$work/bin/nft"
cat >"$work/run.sh" <<'RUN'
hwm() {
    label=$1; shift
    start=$(date +%s.%N)
    "$edgenetd" "$@" >/dev/null 2>"$work/stderr" &
    pid=$!; peak=0
    while [ -e /proc/$pid/status ]; do
        h=$(awk '/VmHWM/{print $2}' /proc/$pid/status 2>/dev/null || true)
        [ -n "$h" ] && peak=$h
        sleep 0.005
    done
    wait $pid && status=0 || status=$?
    [ $status = 0 ] || tail -3 "$work/stderr"
    echo "$label: agent peak RSS $peak KiB, $(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }') s, exit $status"
}
ip link add br0 type bridge; ip link add eth0 type veth peer name e0p
ip link set br0 up; ip link set eth0 up
hwm "first apply" apply --model "$work/model.json" --node nc-1
hwm "no-change apply" apply --model "$work/model.json" --node nc-1
echo "nft runs, in order:"; cat "$work/nft.log" | grep -v 'exited with'
RUN
PATH="$work/bin:$PATH" edgenetd=$edgenetd work=$work unshare -n sh "$work/run.sh"
