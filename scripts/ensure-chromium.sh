#!/usr/bin/env bash
# Make sure a headless Chromium is installed for the browser test of the trigger form.
# Playwright drives the system browser (Debian's chromium package); `playwright install`
# downloads are not needed.
set -euo pipefail
browser="${SENSEI_CHROMIUM:-/usr/bin/chromium}"
if [ -x "$browser" ]; then
    exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "Installing Chromium with apt-get ..."
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    exit 0
fi
echo "Chromium ($browser) is missing: install it (Debian/Ubuntu: sudo apt-get install chromium)," >&2
echo "or point SENSEI_CHROMIUM at a Chromium binary, then run this again." >&2
exit 1
