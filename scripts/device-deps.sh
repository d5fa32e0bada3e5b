#!/usr/bin/env bash
# Prepares .devdeps/ (in .gitignore) for a build on a machine without apt, such
# as a lent GPU machine that has CUDA PyTorch but no Debian packages: the
# Debian .debs of yaml-cpp, nlohmann-json, CLI11, GoogleTest, PCRE2 and
# utf8proc (found by name where the machine has no pkg-config) unpacked under
# .devdeps/root, and the test fixtures copied under .devdeps/fixtures when
# ../shared/fixtures exists. Run from the repository root on a Debian machine;
# then carry .devdeps with the run and call scripts/device-check.sh there.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .devdeps && mkdir -p .devdeps/debs
(cd .devdeps/debs && apt-get download -q libyaml-cpp-dev libyaml-cpp0.7 nlohmann-json3-dev libcli11-dev \
   libgtest-dev libpcre2-dev libpcre2-8-0 libutf8proc-dev libutf8proc2 2>/dev/null)
for deb in .devdeps/debs/*.deb; do dpkg -x "$deb" .devdeps/root; done
rm -rf .devdeps/debs .devdeps/root/usr/share/doc
if [ -d ../shared/fixtures ]; then cp -r ../shared/fixtures .devdeps/fixtures; fi
du -sh .devdeps
