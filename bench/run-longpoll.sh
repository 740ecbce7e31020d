#!/bin/bash
# The "long-poll server" benchmark: edgenet-server and nginx+nchan, each
# holding N parked long polls from N node ids over loopback, driven by the
# same generator (bench/src). Prints the figures of bench/README.md.
#   bench/setup-nchan.sh            # once: nginx + libnginx-mod-nchan
#   bench/run-longpoll.sh [N] [RUNS]
set -euo pipefail
N=${1:-10000}
RUNS=${2:-5}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
cargo build --release -q -p edgenet-server -p edgenet-bench
BIN=$ROOT/target/release
WORK=$(mktemp -d /tmp/longpoll-bench.XXXXXX)
ulimit -n 20000
SERVER_PID=""
NGINX_PID=""
cleanup() {
    [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null || true
    [ -n "$NGINX_PID" ] && kill "$NGINX_PID" 2>/dev/null || true
    sleep 0.5
    rm -rf "$WORK"
}
trap cleanup EXIT

"$BIN/longpoll-load" gen-model --nodes "$N" --instances $((N * 2)) --groups $((N / 5 + 1)) --out "$WORK/cloud.json"

# ---- edgenet-server
"$BIN/edgenet-server" --model "$WORK/cloud.json" --listen 127.0.0.1:18773 --insecure-no-auth \
    --max-parked 100000 --max-wait-seconds 60 2>"$WORK/server.log" &
SERVER_PID=$!
for _ in $(seq 100); do curl -sf http://127.0.0.1:18773/healthz >/dev/null && break; sleep 0.1; done
"$BIN/longpoll-load" edgenet --addr 127.0.0.1:18773 --server-pid "$SERVER_PID" --nodes "$N" --runs "$RUNS" \
    --model "$WORK/cloud.json" | tee "$WORK/edgenet.txt"
kill "$SERVER_PID"; wait "$SERVER_PID" || true; SERVER_PID=""
BYTES=$(sed -n 's/.*mean answer body \([0-9]*\) B.*/\1/p' "$WORK/edgenet.txt")

# ---- nginx + nchan
mkdir -p "$WORK/nginx/logs"
cat >"$WORK/nginx/nginx.conf" <<CONF
load_module /usr/lib/nginx/modules/ngx_nchan_module.so;
worker_processes 2;
worker_rlimit_nofile 20000;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/logs/error.log warn;
events { worker_connections 19000; }
http {
    access_log off;
    keepalive_requests 1000000;
    client_body_buffer_size 128k;
    nchan_max_reserved_memory 512M;
    server {
        listen 127.0.0.1:18081 backlog=4096;
        location ~ ^/sub/(.+)\$ { nchan_subscriber longpoll; nchan_channel_id \$1; nchan_subscriber_timeout 60s; }
        location ~ ^/pub/(.+)\$ { nchan_publisher; nchan_channel_id \$1; nchan_message_buffer_length 1; }
        location = /nchan_status { nchan_stub_status; }
    }
}
CONF
run_nchan() {
    nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -g 'daemon off;' &
    NGINX_PID=$!
    for _ in $(seq 100); do curl -sf http://127.0.0.1:18081/nchan_status >/dev/null && break; sleep 0.1; done
    "$BIN/longpoll-load" nchan --addr 127.0.0.1:18081 --server-pid "$NGINX_PID" --nodes "$N" --runs "$RUNS" \
        --payload-bytes "${BYTES:-4096}" "$@"
    kill "$NGINX_PID"; wait "$NGINX_PID" || true; NGINX_PID=""
}
run_nchan | tee "$WORK/nchan.txt"
run_nchan --broadcast | tee "$WORK/nchan-broadcast.txt"
