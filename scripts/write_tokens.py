#!/usr/bin/env python3
"""Writes a halo token file (HALOTOK1, see src/data/token_data.h) with numpy.

As a module:
    from write_tokens import write_tokens
    write_tokens("train.tok", [[1, 2, 3], [4, 5]], vocab_size=32000)
    # with loss masks (version 2): 1 where a token is a training target, 0 where not
    write_tokens("chat.tok", [[1, 2, 3], [4, 5]], vocab_size=32000, masks=[[0, 1, 1], [0, 1]])

From the shell, one document per line of JSON (a list of token ids, or an
object with a "tokens" or "input_ids" list, and optionally a "mask" list of
0 / 1 of the same length; a file where some document has a mask is written as
version 2, the documents without one counted in full):
    python3 scripts/write_tokens.py train.tok --vocab-size 32000 < docs.jsonl

Empty documents are skipped (a token file holds none); the file is written to
a temporary name and renamed into place. Without masks the file is version 1.
"""
import argparse
import json
import os
import sys

import numpy as np

MAGIC = b"HALOTOK1"
VERSION = 1  # no masks
VERSION_MASKED = 2  # a uint8 mask per token after the tokens


def write_tokens(path, docs, vocab_size, masks=None):
    """Writes the token-id lists `docs` (and their 0 / 1 `masks`, one per document) to `path`;
    returns (documents, tokens) written."""
    if not 0 < vocab_size < 2**31:
        raise ValueError(f"{path}: vocab_size must lie in [1, 2^31), got {vocab_size}")
    arrays = [np.asarray(d, dtype=np.int64).reshape(-1) for d in docs]
    if masks is not None:
        if len(masks) != len(docs):
            raise ValueError(f"{path}: {len(masks)} masks for {len(docs)} documents")
        mask_arrays = [np.asarray(m, dtype=np.int64).reshape(-1) for m in masks]
        for i, (a, m) in enumerate(zip(arrays, mask_arrays)):
            if m.size != a.size:
                raise ValueError(f"{path}: the mask of document {i} has {m.size} values for its {a.size} tokens")
            if m.size and (m.min() < 0 or m.max() > 1):
                raise ValueError(f"{path}: the mask of document {i} holds values other than 0 and 1")
        mask_arrays = [m for a, m in zip(arrays, mask_arrays) if a.size > 0]
    arrays = [a for a in arrays if a.size > 0]
    tokens = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int64)
    if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab_size):
        bad = tokens[(tokens < 0) | (tokens >= vocab_size)][0]
        raise ValueError(f"{path}: token {bad} outside [0, vocab_size {vocab_size})")
    offsets = np.zeros(len(arrays) + 1, dtype="<u8")
    np.cumsum([a.size for a in arrays], out=offsets[1:])
    version = VERSION if masks is None else VERSION_MASKED
    header = (MAGIC + np.array([version, vocab_size], dtype="<u4").tobytes()
              + np.array([len(arrays), tokens.size], dtype="<u8").tobytes())
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(header)
            f.write(offsets.tobytes())
            f.write(tokens.astype("<u4").tobytes())
            if masks is not None and mask_arrays:
                f.write(np.concatenate(mask_arrays).astype("u1").tobytes())
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
    docs, masks = [], []
    for n, line in enumerate(src, 1):
        if not line.strip():
            continue
        d = json.loads(line)
        mask = None
        if isinstance(d, dict):
            mask = d.get("mask")
            d = d.get("tokens", d.get("input_ids"))
        if not isinstance(d, list):
            sys.exit(f"{args.input}:{n}: expected a list of token ids")
        if mask is not None and (not isinstance(mask, list) or len(mask) != len(d)):
            sys.exit(f"{args.input}:{n}: \"mask\" must be a list of 0 / 1 as long as the tokens")
        docs.append(d)
        masks.append(mask)
    any_mask = any(m is not None for m in masks)
    masks = [m if m is not None else [1] * len(d) for d, m in zip(docs, masks)] if any_mask else None
    try:
        n_docs, n_tokens = write_tokens(args.out, docs, args.vocab_size, masks)
    except ValueError as e:
        sys.exit(str(e))
    print(f"{args.out}: {n_docs} documents, {n_tokens} tokens")


if __name__ == "__main__":
    main()
