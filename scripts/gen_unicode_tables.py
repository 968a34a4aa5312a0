#!/usr/bin/env python3
"""Generates src/text/unicode_tables.cpp: the Unicode data of the tokenizers.

What Hugging Face `tokenizers` (0.2x) uses, and so what halo must use to give the same ids:
  * general categories of Unicode 16.0: the pre-tokenizer regexes (\\p{L}, \\p{N}) run on
    Oniguruma 6.9.10, whose tables are Unicode 16.0;
  * canonical combining classes, canonical decompositions and compositions of Unicode 9.0:
    the NFC / NFD normalizers use the crate unicode-normalization-alignments, whose tables
    are Unicode 9.0. The 16.0 data is used here less the code points listed in
    ASSIGNED_AFTER_9_0 (those with a combining class or a decomposition in 16.0 that were
    unassigned in 9.0; computed once from unicodedata2 9.0.0 and 16.0.0).

Usage (unicodedata2 is the `unicodedata` module for a chosen Unicode version):
  pip install unicodedata2==16.0.0
  python3 scripts/gen_unicode_tables.py > src/text/unicode_tables.cpp
  python3 scripts/gen_unicode_tables.py --verify   # compares with `tokenizers`, if installed
"""
import argparse
import sys

import unicodedata2 as ud

CATEGORIES = ["Lu", "Ll", "Lt", "Lm", "Lo", "Mn", "Mc", "Me", "Nd", "Nl", "No", "Pc", "Pd", "Ps", "Pe", "Pi",
              "Pf", "Po", "Sm", "Sc", "Sk", "So", "Zs", "Zl", "Zp", "Cc", "Cf", "Cs", "Co", "Cn"]

ASSIGNED_AFTER_9_0 = [
    (0x07FD, 0x07FD), (0x0897, 0x089F), (0x08CA, 0x08D3), (0x09FE, 0x09FE), (0x0C3C, 0x0C3C), (0x0D3B, 0x0D3C),
    (0x0EBA, 0x0EBA), (0x1715, 0x1715), (0x1ABF, 0x1ACE), (0x1DF6, 0x1DFA), (0xA82C, 0xA82C), (0x105C9, 0x105C9),
    (0x105E4, 0x105E4), (0x10D24, 0x10D27), (0x10D69, 0x10D6D), (0x10EAB, 0x10EAC), (0x10EFD, 0x10EFF),
    (0x10F46, 0x10F50), (0x10F82, 0x10F85), (0x11070, 0x11070), (0x1133B, 0x1133B), (0x11383, 0x11383),
    (0x11385, 0x11385), (0x1138E, 0x1138E), (0x11391, 0x11391), (0x113C5, 0x113C5), (0x113C7, 0x113C8),
    (0x113CE, 0x113D0), (0x1145E, 0x1145E), (0x11839, 0x1183A), (0x11938, 0x11938), (0x1193D, 0x1193E),
    (0x11943, 0x11943), (0x119E0, 0x119E0), (0x11A34, 0x11A34), (0x11A47, 0x11A47), (0x11A99, 0x11A99),
    (0x11D42, 0x11D42), (0x11D44, 0x11D45), (0x11D97, 0x11D97), (0x11F41, 0x11F42), (0x16121, 0x16128),
    (0x1612F, 0x1612F), (0x16D68, 0x16D6A), (0x16FF0, 0x16FF1), (0x1E08F, 0x1E08F), (0x1E130, 0x1E136),
    (0x1E2AE, 0x1E2AE), (0x1E2EC, 0x1E2EF), (0x1E4EC, 0x1E4EF), (0x1E5EE, 0x1E5EF),
]
HANGUL_FIRST, HANGUL_LAST = 0xAC00, 0xD7A3


def after_9_0(cp):
    return any(a <= cp <= b for a, b in ASSIGNED_AFTER_9_0)


def code_points():
    return (cp for cp in range(0x110000) if not 0xD800 <= cp <= 0xDFFF)


def ccc(cp):
    return 0 if after_9_0(cp) else ud.combining(chr(cp))


def canonical_decomposition(cp):
    """The full canonical decomposition (Hangul excluded), or None."""
    if after_9_0(cp) or HANGUL_FIRST <= cp <= HANGUL_LAST:
        return None
    d = ud.decomposition(chr(cp))
    if not d or d.startswith("<"):
        return None
    out = []
    for part in d.split():
        sub = canonical_decomposition(int(part, 16))
        out.extend(sub if sub else [int(part, 16)])
    return out


def tables():
    runs = []  # (start, category) where the category changes
    for cp in range(0x110000):
        cat = CATEGORIES.index(ud.category(chr(cp)))
        if not runs or runs[-1][1] != cat:
            runs.append((cp, cat))
    ccc_runs = []
    for cp in range(0x110000):
        c = 0 if 0xD800 <= cp <= 0xDFFF else ccc(cp)
        if not ccc_runs or ccc_runs[-1][1] != c:
            ccc_runs.append((cp, c))
    decomps = {}
    for cp in code_points():
        d = canonical_decomposition(cp)
        if d:
            decomps[cp] = d
    compositions = []  # primary composites: a two-character decomposition that NFC recomposes
    for cp in code_points():
        if after_9_0(cp) or HANGUL_FIRST <= cp <= HANGUL_LAST:
            continue
        d = ud.decomposition(chr(cp))
        if not d or d.startswith("<") or len(d.split()) != 2:
            continue
        a, b = (int(x, 16) for x in d.split())
        if ud.normalize("NFC", chr(cp)) == chr(cp) and ccc(a) == 0:
            compositions.append((a, b, cp))
    compositions.sort()
    # NFC_Quick_Check != Yes (or a non-zero combining class): such text goes the slow way.
    seconds = {b for _, b, _ in compositions} | set(range(0x1161, 0x1176)) | set(range(0x11A8, 0x11C3))
    nfc_maybe = [cp for cp in code_points()
                 if ccc(cp) != 0 or cp in seconds or (cp in decomps and not any(c == cp for _, _, c in compositions))]
    return runs, ccc_runs, decomps, compositions, nfc_maybe


def ranges(cps):
    out = []
    for cp in sorted(cps):
        if out and out[-1][1] == cp - 1:
            out[-1][1] = cp
        else:
            out.append([cp, cp])
    return out


def emit(values, per_line, fmt):
    lines = []
    for i in range(0, len(values), per_line):
        lines.append("    " + ", ".join(fmt(v) for v in values[i:i + per_line]) + ",")
    return "\n".join(lines)


def generate():
    runs, ccc_runs, decomps, compositions, nfc_maybe = tables()
    decomp_data, decomp_index = [], []
    for cp in sorted(decomps):
        d = decomps[cp]
        decomp_index.append((cp, len(decomp_data), len(d)))
        decomp_data.extend(d)
    maybe_ranges = ranges(nfc_maybe)
    out = []
    out.append("// Generated by scripts/gen_unicode_tables.py from unicodedata2 %s: do not edit." % ud.unidata_version)
    out.append("// General categories: Unicode %s; normalization data: Unicode 9.0 (what Hugging Face" % ud.unidata_version)
    out.append("// tokenizers uses; see the script).")
    out.append('#include "text/unicode_tables.h"')
    out.append("")
    out.append("namespace halo::text::tables {")
    out.append("")
    out.append("// (first code point << 5) | category, for each run of one general category.")
    out.append("const uint32_t kCategoryRuns[] = {")
    out.append(emit([(s << 5) | c for s, c in runs], 8, lambda v: "0x%08x" % v))
    out.append("};")
    out.append("const size_t kCategoryRunCount = %d;" % len(runs))
    out.append("")
    out.append("// (first code point << 8) | canonical combining class, for each run of one class.")
    out.append("const uint32_t kCombiningRuns[] = {")
    out.append(emit([(s << 8) | c for s, c in ccc_runs], 8, lambda v: "0x%08x" % v))
    out.append("};")
    out.append("const size_t kCombiningRunCount = %d;" % len(ccc_runs))
    out.append("")
    out.append("// Full canonical decompositions (Hangul syllables excluded): code point, offset in")
    out.append("// kDecompositionData, length.")
    out.append("const Decomposition kDecompositions[] = {")
    out.append(emit(decomp_index, 5, lambda v: "{0x%05x, %d, %d}" % v))
    out.append("};")
    out.append("const size_t kDecompositionCount = %d;" % len(decomp_index))
    out.append("const uint32_t kDecompositionData[] = {")
    out.append(emit(decomp_data, 10, lambda v: "0x%05x" % v))
    out.append("};")
    out.append("")
    out.append("// Primary composites: first, second, composite (sorted).")
    out.append("const Composition kCompositions[] = {")
    out.append(emit(compositions, 4, lambda v: "{0x%05x, 0x%05x, 0x%05x}" % v))
    out.append("};")
    out.append("const size_t kCompositionCount = %d;" % len(compositions))
    out.append("")
    out.append("// Code points that NFC may change or reorder (NFC_Quick_Check not Yes, or combining")
    out.append("// class not 0): first, last of each range.")
    out.append("const uint32_t kNfcMaybeRanges[][2] = {")
    out.append(emit(maybe_ranges, 6, lambda v: "{0x%05x, 0x%05x}" % tuple(v)))
    out.append("};")
    out.append("const size_t kNfcMaybeRangeCount = %d;" % len(maybe_ranges))
    out.append("")
    out.append("}  // namespace halo::text::tables")
    return "\n".join(out) + "\n"


def verify():
    """Compares the classes and the normalizers with Hugging Face tokenizers'."""
    from tokenizers import Regex, normalizers, pre_tokenizers
    cps = [cp for cp in code_points() if cp != 0]
    sep = "\x00"
    text = sep.join(chr(cp) for cp in cps)
    bad = 0
    for name, pattern, mine in (
            ("\\p{L}", r"\p{L}", lambda c: ud.category(chr(c))[0] == "L"),
            ("\\p{N}", r"\p{N}", lambda c: ud.category(chr(c))[0] == "N"),
            ("\\s", r"\s", lambda c: c in (9, 10, 11, 12, 13, 0x20, 0x85) or ud.category(chr(c)) in ("Zs", "Zl", "Zp"))):
        split = pre_tokenizers.Split(Regex(pattern), behavior="removed")
        kept = set("".join(p for p, _ in split.pre_tokenize_str(text)).replace(sep, ""))
        diff = [cp for cp in cps if (chr(cp) not in kept) != mine(cp)]
        print(f"{name}: {len(diff)} differences {[hex(c) for c in diff[:10]]}")
        bad += len(diff)
    for name, norm in (("NFC", normalizers.NFC()), ("NFD", normalizers.NFD())):
        diff = []
        for cp in cps:
            c = ccc(cp)
            tests = [chr(cp), "a\u0301" + chr(cp), "a" + chr(cp) + "\u0334"] if c or cp in DECOMPS else [chr(cp)]
            for t in tests:
                if norm.normalize_str(t) != reference_normalize(name, t):
                    diff.append(cp)
                    break
        print(f"{name}: {len(diff)} differences {[hex(c) for c in diff[:10]]}")
        bad += len(diff)
    return bad


DECOMPS = {}


def reference_normalize(form, text):
    """NFC/NFD by the tables above (Unicode 9.0 normalization), for --verify."""
    out = []
    for ch in text:
        cp = ord(ch)
        if HANGUL_FIRST <= cp <= HANGUL_LAST:
            s = cp - HANGUL_FIRST
            out += [0x1100 + s // 588, 0x1161 + (s % 588) // 28] + ([0x11A7 + s % 28] if s % 28 else [])
        else:
            out += DECOMPS.get(cp, [cp])
    i = 1
    while i < len(out):  # canonical ordering (insertion sort on runs of non-starters)
        j = i
        while j > 0 and ccc(out[j]) != 0 and ccc(out[j - 1]) > ccc(out[j]):
            out[j - 1], out[j] = out[j], out[j - 1]
            j -= 1
        i += 1
    if form == "NFD":
        return "".join(map(chr, out))
    comp = {(a, b): c for a, b, c in COMPOSITIONS}

    def compose(a, b):
        if 0x1100 <= a <= 0x1112 and 0x1161 <= b <= 0x1175:
            return HANGUL_FIRST + ((a - 0x1100) * 21 + b - 0x1161) * 28
        if HANGUL_FIRST <= a <= HANGUL_LAST and (a - HANGUL_FIRST) % 28 == 0 and 0x11A8 <= b <= 0x11C2:
            return a + b - 0x11A7
        return comp.get((a, b))

    result, starter, last_ccc = [], None, 0
    for cp in out:
        c = ccc(cp)
        if starter is not None and (starter == len(result) - 1 or 0 != last_ccc < c):
            composed = compose(result[starter], cp)
            if composed is not None:
                result[starter] = composed
                continue
        if c == 0:
            starter = len(result)
        last_ccc = c
        result.append(cp)
    return "".join(map(chr, result))


COMPOSITIONS = []


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--verify", action="store_true", help="compare with the installed Hugging Face tokenizers")
    args = ap.parse_args()
    if ud.unidata_version != "16.0.0":
        print(f"warning: unicodedata2 is Unicode {ud.unidata_version}, tokenizers' regexes use 16.0.0",
              file=sys.stderr)
    if args.verify:
        _, _, decomps, compositions, _ = tables()
        DECOMPS.update(decomps)
        COMPOSITIONS.extend(compositions)
        sys.exit(1 if verify() else 0)
    sys.stdout.write(generate())


if __name__ == "__main__":
    main()
