#!/usr/bin/env bash
# The baseline of `make bench`: nginx with the Nchan module, from Debian's packages.
set -euo pipefail
if command -v nginx >/dev/null && [ -f /usr/lib/nginx/modules/ngx_nchan_module.so ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "bench: nginx + Nchan missing; as root: apt-get install nginx libnginx-mod-nchan" >&2
  exit 0
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light libnginx-mod-nchan >/dev/null || \
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx libnginx-mod-nchan >/dev/null
