#!/usr/bin/env bash
# Builds target/debian/edgenet_<version>_<arch>.deb: both binaries, the
# systemd units, sysusers/tmpfiles/sysctl/modules-load snippets, example
# configs, man pages and shell completions (generated from the clap
# definitions by xtask).
#
#   scripts/build-deb.sh            release binaries (for a real install)
#   scripts/build-deb.sh dev        debug binaries (CI: proves the package builds)
set -euo pipefail
cd "$(dirname "$0")/.."

profile=${1:-release}
case "$profile" in
  release) cargo_profile=(--release); bin_dir=target/release ;;
  dev) cargo_profile=(); bin_dir=target/debug ;;
  *) echo "usage: $0 [release|dev]" >&2; exit 1 ;;
esac

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
arch=$(dpkg --print-architecture)
cargo build "${cargo_profile[@]}" -p edgenet-agent -p edgenet-server --bins

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
install -Dm0755 "$bin_dir/edgenetd" "$root/usr/bin/edgenetd"
install -Dm0755 "$bin_dir/edgenet-server" "$root/usr/bin/edgenet-server"
install -Dm0644 systemd/edgenetd.service "$root/lib/systemd/system/edgenetd.service"
install -Dm0644 systemd/edgenet-server.service "$root/lib/systemd/system/edgenet-server.service"
install -Dm0644 systemd/edgenet.sysusers "$root/usr/lib/sysusers.d/edgenet.conf"
install -Dm0644 systemd/edgenet.tmpfiles "$root/usr/lib/tmpfiles.d/edgenet.conf"
install -Dm0644 systemd/edgenet-server.sysusers "$root/usr/lib/sysusers.d/edgenet-server.conf"
install -Dm0644 systemd/edgenet-server.tmpfiles "$root/usr/lib/tmpfiles.d/edgenet-server.conf"
install -Dm0755 systemd/edgenet-server-setup "$root/usr/libexec/edgenet-server/edgenet-server-setup"
install -Dm0644 systemd/60-edgenet.sysctl "$root/usr/lib/sysctl.d/60-edgenet.conf"
install -Dm0644 systemd/edgenet.modules-load "$root/usr/lib/modules-load.d/edgenet.conf"
install -Dm0640 systemd/edgenetd.toml "$root/etc/edgenet/edgenetd.toml"
docs="$root/usr/share/doc/edgenet"
install -Dm0644 README.md "$docs/README.md"
for example in systemd/server-credentials.example.toml systemd/node-credentials.example examples/cloud.json; do
  install -Dm0644 "$example" "$docs/examples/$(basename "$example")"
done

generated=$(mktemp -d)
trap 'rm -rf "$root" "$generated"' EXIT
cargo run -q "${cargo_profile[@]}" -p edgenet-xtask -- man "$generated/man"
cargo run -q "${cargo_profile[@]}" -p edgenet-xtask -- completions "$generated/completions"
for page in "$generated"/man/*.8; do
  gzip -9n < "$page" > "$generated/$(basename "$page").gz"
  install -Dm0644 "$generated/$(basename "$page").gz" "$root/usr/share/man/man8/$(basename "$page").gz"
done
for binary in edgenetd edgenet-server; do
  install -Dm0644 "$generated/completions/$binary.bash" "$root/usr/share/bash-completion/completions/$binary"
  install -Dm0644 "$generated/completions/_$binary" "$root/usr/share/zsh/vendor-completions/_$binary"
  install -Dm0644 "$generated/completions/$binary.fish" "$root/usr/share/fish/vendor_completions.d/$binary.fish"
done

install -d "$root/DEBIAN"
cat > "$root/DEBIAN/control" <<CONTROL
Package: edgenet
Version: $version
Architecture: $arch
Maintainer: edgenet developers <edgenet@example.invalid>
Depends: nftables, iproute2, systemd, openssl
Section: net
Priority: optional
Installed-Size: $(du -sk "$root" | cut -f1)
Description: network agent and describe endpoint of a private cloud
 edgenetd long-polls the cloud's DescribeNetworkModel endpoint for its
 node's view of the network model and drives netlink routes, addresses and
 nftables rules until the kernel matches it. edgenet-server is the
 describe endpoint, with a development STS.
CONTROL
echo "/etc/edgenet/edgenetd.toml" > "$root/DEBIAN/conffiles"
cat > "$root/DEBIAN/postinst" <<'POSTINST'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
  systemd-sysusers edgenet.conf edgenet-server.conf >/dev/null 2>&1 || true
  systemd-tmpfiles --create edgenet.conf edgenet-server.conf >/dev/null 2>&1 || true
  /usr/libexec/edgenet-server/edgenet-server-setup /etc/edgenet-server
  chgrp edgenet /etc/edgenet/edgenetd.toml 2>/dev/null || true
  if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || true
  fi
fi
POSTINST
chmod 0755 "$root/DEBIAN/postinst"

mkdir -p target/debian
package="target/debian/edgenet_${version}_${arch}.deb"
dpkg-deb --root-owner-group --build "$root" "$package" >/dev/null
echo "$package"
