#!/usr/bin/env bash
# Install the headless browser the browser tests drive (Debian's Chromium).
# Idempotent: does nothing when /usr/bin/chromium is already there. Needs root
# (or sudo) on a Debian machine; Playwright's own browser downloads are never used.
set -euo pipefail

CHROMIUM=/usr/bin/chromium

if [[ -x "$CHROMIUM" ]]; then
    exit 0
fi

SUDO=""
if [[ "$(id -u)" -ne 0 ]]; then
    SUDO="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends chromium fonts-liberation
echo "installed $CHROMIUM"
