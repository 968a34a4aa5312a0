#!/usr/bin/env python3
"""Checks that Hugging Face transformers loads a model directory halo wrote (a
training run's final/ or a checkpoint, `halo init`, `halo convert`) unchanged,
and that its logits equal halo's on the same token ids.

  python3 scripts/check_hf_logits.py --model DIR [--halo BIN] [--device cpu|cuda]
         [--ids 1,2,3] [--tol T]

halo: `halo logits --model DIR --ids ... --device D` (cpu: f32; cuda: bf16).
transformers: AutoModelForCausalLM.from_pretrained(DIR) in float32, on the GPU
when there is one. Prints max abs / rel differences and whether the argmax of
every position agrees; exit status 0 when within tolerance (default 1e-3 for
--device cpu, 3e-2 for cuda: bf16 weights and activations).
"""
import argparse
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check_gguf_logits import diff, need  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="a model directory halo wrote")
    ap.add_argument("--halo", default=os.environ.get("HALO_BIN", "build/halo"), help="the halo program")
    ap.add_argument("--device", default="cpu", help="halo logits --device: cpu (f32) or cuda (bf16)")
    ap.add_argument("--ids", default="1,17,300,42,99,5,7,123,64,2", help="token ids, comma-separated")
    ap.add_argument("--tol", type=float, help="max |diff| / max |logit| allowed")
    args = ap.parse_args()
    for m in ("torch", "transformers", "safetensors"):
        need(m, "pip install " + m)
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    tol = args.tol if args.tol is not None else (3e-2 if args.device == "cuda" else 1e-3)
    ids = [int(x) for x in args.ids.split(",")]
    out = os.path.join(tempfile.mkdtemp(prefix="halo_hf_check_"), "logits.safetensors")
    subprocess.run([args.halo, "logits", "--model", args.model, "--ids", ",".join(map(str, ids)), "--out", out,
                    "--device", args.device], check=True)
    halo_logits = load_file(out)["logits"].float()

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    except TypeError:  # transformers 4.x spells it torch_dtype
        model = AutoModelForCausalLM.from_pretrained(args.model, torch_dtype=torch.float32)
    model = model.to(dev).eval()
    with torch.no_grad():
        ref = model(torch.tensor([ids], device=dev)).logits[0].float().cpu()
    print(f"transformers loaded {args.model}: {type(model).__name__}, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters")
    ok = diff(f"halo logits ({args.device}) vs transformers ({dev}, f32)", halo_logits, ref, tol)
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
