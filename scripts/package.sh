#!/usr/bin/env bash
# Build the Debian package: target/debian/sluicegate_<version>-1_<arch>.deb.
# Release build, then the man pages and completions generated from the CLI
# definition (`sluicegate generate-assets`), then cargo-deb packages what
# [package.metadata.deb] in Cargo.toml lists. cargo-deb is installed when
# missing (crates.io). Prints the path of the package on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo deb --version >/dev/null 2>&1; then
  echo "installing cargo-deb"
  cargo install cargo-deb --locked
fi

cargo build --release --locked
target_dir="${CARGO_TARGET_DIR:-target}"
assets="$target_dir/release/assets"
rm -rf "$assets"
"$target_dir/release/sluicegate" generate-assets "$assets"
# Debian policy: man pages compressed, reproducibly (no name or time stamp).
gzip -9n "$assets"/man/*.1

# Stripped: the release profile keeps line tables for profiling, which would
# triple the installed size.
cargo deb --no-build --locked --strip | tail -n 1
