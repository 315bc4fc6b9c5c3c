#!/usr/bin/env bash
# Installs what the tests need (Debian packages, as root or through sudo), then runs every
# check: format, lints, unit tests, end-to-end tests on loopback, and the demo.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(iperf3 openssh-server openssh-client wireguard-go wireguard-tools nginx iproute2 curl chromium)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "== installing: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --release --workspace --all-targets -- -D warnings
echo "== build"
cargo build --release --workspace --bins
echo "== tests"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --release --workspace 2>&1 | tee "$log"
echo "== smoltcp's TCP tests, with ferry's changes (vendor/README.md)"
cargo test --release --manifest-path vendor/smoltcp/Cargo.toml --target-dir target/vendor \
  --lib socket::tcp 2>&1 | tee -a "$log"
echo "== demo"
timeout 300 target/release/ferry demo --mebibytes 64
# One closing line over every test binary (cargo prints one summary per binary).
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
