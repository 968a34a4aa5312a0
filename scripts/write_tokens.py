#!/usr/bin/env python3
"""Writes a halo token file (HALOTOK1, see src/data/token_data.h) with numpy.

As a module:
    from write_tokens import write_tokens
    write_tokens("train.tok", [[1, 2, 3], [4, 5]], vocab_size=32000)

From the shell, one document per line of JSON (a list of token ids, or an
object with a "tokens" or "input_ids" list):
    python3 scripts/write_tokens.py train.tok --vocab-size 32000 < docs.jsonl

Empty documents are skipped (a token file holds none); the file is written to
a temporary name and renamed into place.
"""
import argparse
import json
import os
import sys

import numpy as np

MAGIC = b"HALOTOK1"
VERSION = 1


def write_tokens(path, docs, vocab_size):
    """Writes the token-id lists `docs` to `path`; returns (documents, tokens) written."""
    if not 0 < vocab_size < 2**31:
        raise ValueError(f"{path}: vocab_size must lie in [1, 2^31), got {vocab_size}")
    arrays = [np.asarray(d, dtype=np.int64).reshape(-1) for d in docs]
    arrays = [a for a in arrays if a.size > 0]
    tokens = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int64)
    if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab_size):
        bad = tokens[(tokens < 0) | (tokens >= vocab_size)][0]
        raise ValueError(f"{path}: token {bad} outside [0, vocab_size {vocab_size})")
    offsets = np.zeros(len(arrays) + 1, dtype="<u8")
    np.cumsum([a.size for a in arrays], out=offsets[1:])
    header = (MAGIC + np.array([VERSION, vocab_size], dtype="<u4").tobytes()
              + np.array([len(arrays), tokens.size], dtype="<u8").tobytes())
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(header)
            f.write(offsets.tobytes())
            f.write(tokens.astype("<u4").tobytes())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return len(arrays), int(tokens.size)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="token file to write")
    ap.add_argument("--vocab-size", type=int, required=True)
    ap.add_argument("--input", default="-", help="JSON-lines file of documents (default: stdin)")
    args = ap.parse_args()
    src = sys.stdin if args.input == "-" else open(args.input)
    docs = []
    for n, line in enumerate(src, 1):
        if not line.strip():
            continue
        d = json.loads(line)
        if isinstance(d, dict):
            d = d.get("tokens", d.get("input_ids"))
        if not isinstance(d, list):
            sys.exit(f"{args.input}:{n}: expected a list of token ids")
        docs.append(d)
    n_docs, n_tokens = write_tokens(args.out, docs, args.vocab_size)
    print(f"{args.out}: {n_docs} documents, {n_tokens} tokens")


if __name__ == "__main__":
    main()
