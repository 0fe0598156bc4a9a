#!/usr/bin/env bash
# Make sure redis-server is installed: the Celery tests start their own (the broker of a CeleryExecutor
# deployment with two workers). Only the binary is needed; no system service is used.
set -euo pipefail
redis="${SENSEI_REDIS_SERVER:-redis-server}"
if command -v "$redis" >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "Installing redis-server with apt-get ..."
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
    exit 0
fi
echo "redis-server is missing: install it (Debian/Ubuntu: sudo apt-get install redis-server)," >&2
echo "or point SENSEI_REDIS_SERVER at a redis-server binary, then run this again." >&2
exit 1
