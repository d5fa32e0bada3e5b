#!/usr/bin/env bash
# Installs every Debian package MoEKit's build, tests, benchmarks and recipes
# need. Idempotent: does nothing (and prints nothing) when all are present.
# Works as root or through sudo.  Usage: scripts/setup-deps.sh [--recipes | --fuzz | --browser]
set -euo pipefail

packages=(
  cmake ninja-build g++ make pkg-config
  libtorch-dev libopenblas0-pthread libopenblas-pthread-dev
  libgloo-dev
  libsentencepiece-dev sentencepiece
  libsndfile1-dev libsoxr-dev
  libyaml-cpp-dev nlohmann-json3-dev libcli11-dev libpcre2-dev libutf8proc-dev libboost-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  python3-torch time
)
if [[ "${1:-}" == "--fuzz" ]]; then
  # libFuzzer and the sanitizers' runtimes (fuzz/, make fuzz)
  packages+=(clang libclang-rt-dev)
fi
if [[ "${1:-}" == "--browser" ]]; then
  # headless Chromium: the test of the recognition server's page (make test)
  packages+=(chromium)
fi
if [[ "${1:-}" == "--recipes" ]]; then
  # speech synthesis and augmentation, IRSTLM (the ASR recipe's word n-gram
  # model); gettext catalogs (the translation recipe): data-only l10n packages;
  # word lists (its grapheme-to-phoneme set); ICU's spell-out rules (its
  # numbers-in-words set, the demo's)
  packages+=(espeak-ng flite sox libsox-fmt-all gettext fortunes gnuplot-nox irstlm
    vlc-l10n gnupg-l10n libc-l10n util-linux-locales gcc-12-locales
    python3-websockets python3-icu wamerican wfrench wngerman wspanish witalian wportuguese wdutch wpolish wdanish)
fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

sudo_cmd=()
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null || { echo "setup-deps: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
  sudo_cmd=(sudo)
fi
echo "setup-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update -qq >/dev/null
"${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
