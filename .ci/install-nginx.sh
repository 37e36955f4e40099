#!/usr/bin/env bash
# Test set-up: the remote-tier tests serve checkpoints with a real nginx on 127.0.0.1 (tests/loaders/nginx.py).
# Installs it with apt-get when it is missing and we are root; otherwise says so loudly (those tests then FAIL,
# they never skip). Called by `make test`; safe to run again.
set -uo pipefail
if command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "[coldstart] nginx not found: installing it with apt-get (needed by the remote-tier tests)" >&2
  export DEBIAN_FRONTEND=noninteractive
  # the package must not start its default site (0.0.0.0:80): the tests start their own nginx on 127.0.0.1 only
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get install -y -q nginx >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q nginx >/dev/null; } \
    || echo "[coldstart] WARNING: apt-get could not install nginx; the remote-tier tests will FAIL" >&2
else
  echo "[coldstart] WARNING: nginx is not installed and this is not a root Debian/Ubuntu shell: install nginx" \
       "(e.g. sudo apt-get install nginx); the remote-tier tests will FAIL until then" >&2
fi
exit 0
