#!/usr/bin/env bash
# Build the Debian package (scripts/package.sh) and check what is in it:
# the binary, the unit, the config as a conffile, the sysusers file, the man
# pages and completions; then, unpacked into a scratch directory, that the
# binary runs and accepts the shipped config, that the man page renders and
# that the unpacked unit passes `systemd-analyze verify`.
# With --install (root, a throwaway machine such as CI): `dpkg -i` for real,
# then the account, the config's directory permissions, `sluicegate check`
# as the service user, a reinstall (the upgrade path), and `dpkg --purge`.
# A release build with fat LTO takes minutes, hence a script of its own for
# CI (.ci/run) rather than a test in the suite. Needs dpkg-deb, man and
# systemd-analyze (Debian packages dpkg, man-db, systemd).
set -euo pipefail
cd "$(dirname "$0")/.."
install=no
[ "${1:-}" = "--install" ] && install=yes

deb="$(scripts/package.sh | tail -n 1)"
[ -f "$deb" ] || { echo "package.sh did not name a .deb (got: $deb)"; exit 1; }
echo "package: $deb"

fail() { echo "package check failed: $*" >&2; exit 1; }

listing="$(dpkg-deb -c "$deb" | awk '{print $NF}' | sed 's#^\./#/#')"
for f in \
  /usr/bin/sluicegate \
  /etc/sluicegate/sluicegate.toml \
  /usr/lib/systemd/system/sluicegate.service \
  /usr/lib/sysusers.d/sluicegate.conf \
  /usr/share/man/man1/sluicegate.1.gz \
  /usr/share/man/man1/sluicegate-check.1.gz \
  /usr/share/bash-completion/completions/sluicegate \
  /usr/share/zsh/vendor-completions/_sluicegate \
  /usr/share/fish/vendor_completions.d/sluicegate.fish \
  /usr/share/doc/sluicegate/examples/sluicegate.toml; do
  grep -qxF "$f" <<<"$listing" || fail "$f is not in the package:"$'\n'"$listing"
done

ctrl="$(mktemp -d)"
root="$(mktemp -d)"
trap 'rm -rf "$ctrl" "$root"' EXIT
dpkg-deb -e "$deb" "$ctrl"
grep -qxF /etc/sluicegate/sluicegate.toml "$ctrl/conffiles" || fail "the config is not a conffile"
grep -q 'systemd-sysusers .*sluicegate.conf' "$ctrl/postinst" || fail "postinst does not create the user"
grep -q 'deb-systemd-helper' "$ctrl/postinst" || fail "postinst does not register the unit"

dpkg-deb -x "$deb" "$root"
"$root/usr/bin/sluicegate" --version | grep -qx "sluicegate $(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)" \
  || fail "the packaged binary's --version"
"$root/usr/bin/sluicegate" check -c "$root/etc/sluicegate/sluicegate.toml" >/dev/null \
  || fail "the shipped config does not pass check"
man -l "$root/usr/share/man/man1/sluicegate.1.gz" 2>/dev/null | grep -q NOTIFY_SOCKET \
  || fail "the man page does not render (or lacks ENVIRONMENT)"
# The unpacked unit, its binary path pointed at the unpacked binary (verify
# checks that ExecStart exists; --root would need a whole systemd tree).
unit_dir="$(mktemp -d)"
trap 'rm -rf "$ctrl" "$root" "$unit_dir"' EXIT
sed "s#/usr/bin/sluicegate#$root/usr/bin/sluicegate#g" \
  "$root/usr/lib/systemd/system/sluicegate.service" >"$unit_dir/sluicegate.service"
systemd-analyze verify --man=no "$unit_dir/sluicegate.service" \
  || fail "systemd-analyze verify on the unpacked unit"

if [ "$install" = yes ]; then
  dpkg -i "$deb" >/dev/null
  getent passwd sluicegate >/dev/null || fail "dpkg -i created no sluicegate user"
  [ "$(stat -c %U:%G:%a /etc/sluicegate)" = "root:sluicegate:750" ] \
    || fail "/etc/sluicegate is $(stat -c %U:%G:%a /etc/sluicegate), want root:sluicegate:750"
  su -s /bin/sh sluicegate -c 'sluicegate check -c /etc/sluicegate/sluicegate.toml' >/dev/null \
    || fail "the service user cannot check the installed config"
  [ "$(man -w sluicegate)" = /usr/share/man/man1/sluicegate.1.gz ] || fail "man -w sluicegate"
  dpkg -i "$deb" >/dev/null || fail "reinstall (upgrade path)"
  dpkg --purge sluicegate >/dev/null
  [ ! -e /usr/bin/sluicegate ] && [ ! -e /etc/sluicegate ] || fail "purge left files"
  echo "installed, reinstalled and purged"
fi
echo "package check ok: $(wc -l <<<"$listing") entries"
