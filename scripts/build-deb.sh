#!/usr/bin/env bash
# Builds the two Debian packages with debhelper (debian/), into target/debian:
#
#   edgenetd_<version>_<arch>.deb        the node agent, its unit, the
#                                        nftables.service drop-in, sysusers,
#                                        tmpfiles, sysctl and modules-load
#                                        snippets, edgenetd.toml (a conffile)
#   edgenet-server_<version>_<arch>.deb  the describe endpoint, its unit and
#                                        edgenet-server-setup
#   *-dbgsym_<version>_<arch>.deb        the binaries' debug info (release
#                                        only; the binaries are stripped)
#
# Each also has its man pages and shell completions, generated from the clap
# definitions by xtask. The paths of the built packages are printed last.
#
#   scripts/build-deb.sh            release binaries (for a real install)
#   scripts/build-deb.sh dev        debug binaries (CI: proves the packages build)
set -euo pipefail
cd "$(dirname "$0")/.."

profile=${1:-release}
case "$profile" in
  release|dev) ;;
  *) echo "usage: $0 [release|dev]" >&2; exit 1 ;;
esac

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
changelog_version=$(dpkg-parsechangelog -S Version)
if [ "$version" != "$changelog_version" ]; then
  echo "debian/changelog is at $changelog_version, Cargo.toml at $version: add a changelog entry (dch -v $version)" >&2
  exit 1
fi

export EDGENET_PROFILE=$profile
if [ "$profile" = dev ]; then
  # Compressing the debug packages of unoptimized binaries takes minutes:
  # CI's packages are stripped and their debug info is dropped instead.
  export DEB_BUILD_OPTIONS="noddebs ${DEB_BUILD_OPTIONS:-}"
fi
rm -f target/debian/edgenet*_"$version"_*.deb
mkdir -p target/debian
trap 'debian/rules clean >/dev/null 2>&1 || true' EXIT
debian/rules clean >/dev/null
debian/rules build >&2
debian/rules binary >&2
ls target/debian/edgenet*_"$version"_*.deb
