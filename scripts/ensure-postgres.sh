#!/usr/bin/env bash
# Make sure PostgreSQL server binaries are installed (the tests and the demo start their own servers).
set -euo pipefail
if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "Installing the PostgreSQL server with apt-get ..."
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    exit 0
fi
echo "PostgreSQL server binaries (initdb, pg_ctl) are missing: install the postgresql package" >&2
echo "(Debian/Ubuntu: sudo apt-get install postgresql), then run this again." >&2
exit 1
