#!/usr/bin/env bash
# Debian packages the tests drive: bubblewrap (sandboxes), skopeo/umoci (OCI checks), chromium (portal).
set -euo pipefail
packages=$(grep -v '^#' "$(dirname "$0")/apt-packages.txt" | xargs)
missing=()
for p in $packages; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
