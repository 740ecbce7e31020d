#!/usr/bin/env bash
# Runs lintian on the given .deb files: any error fails; every warning and
# pedantic note is printed, with a count, so a new one shows in the log.
#
#   scripts/check-lintian.sh target/debian/edgenetd_*.deb ...
set -euo pipefail
[ $# -gt 0 ] || { echo "usage: $0 PACKAGE.deb..." >&2; exit 1; }

report=$(mktemp)
trap 'rm -f "$report"' EXIT
# Lintian refuses nothing as root but says it should not run so: give it
# an unprivileged user when there is one.
run=(lintian --fail-on error --display-info --pedantic "$@")
if [ "$(id -u)" = 0 ] && id nobody >/dev/null 2>&1; then
  run=(setpriv --reuid=nobody --regid=nogroup --clear-groups env HOME=/tmp "${run[@]}")
fi
status=0
"${run[@]}" >"$report" 2>&1 || status=$?
cat "$report"
for level in E W I P; do
  printf '%s: %s\n' "$level" "$(grep -c "^$level: " "$report" || true)"
done
if [ $status -ne 0 ]; then
  echo "lintian: errors (exit $status)" >&2
  exit 1
fi
echo "lintian: no errors"
