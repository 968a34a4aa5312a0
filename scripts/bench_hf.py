#!/usr/bin/env python3
"""Training throughput of Hugging Face transformers on one GPU: the baseline
that `halo bench train` is compared against (scripts/bench_compare.sh).

  python3 scripts/bench_hf.py --config configs/llama-3.2-1b.json --batch 4 --seq-len 2048 \
      [--steps 20] [--warmup 5] [--json] [--compile] [--grad-ckpt]

What it runs: LlamaForCausalLM (AutoModelForCausalLM) built from the config
with random init, in bf16 on cuda, attn_implementation="sdpa"; pure bf16
training: parameters, gradients and AdamW states all bf16 (no fp32 master
weights, no autocast), torch.optim.AdamW(fused=True). Each step is a full
training step on a fresh random token batch (labels = inputs, transformers'
shifted cross-entropy): forward, loss, backward, optimizer step,
zero_grad(set_to_none=True). Gradient checkpointing is off and torch.compile
is not used unless asked for. Each step is timed on the host clock between two
torch.cuda.synchronize() calls; the first --warmup steps are not counted; the
result is the median of the --steps timed steps.

Reported: median step ms (and min/mean/max), tokens/s = batch * seq_len /
median step, peak memory of the timed steps (torch.cuda.max_memory_allocated
and max_memory_reserved, reset after warm-up), and MFU = training FLOPs per
step / median step time / H100_SXM_BF16_DENSE_PEAK (989e12, the H100 SXM
datasheet's dense BF16 rate). Training FLOPs per token follow halo's
LlamaModel::train_flops_per_token: 6 * (non-embedding params + LM head V*d,
counted also when tied) + causal attention 3 * layers * 4 * heads * head_dim *
(seq_len + 1) / 2 (forward QK^T and PV over the causal pairs, backward twice
that; no recomputation counted). "mfu_no_head" leaves the LM head out
(ANCHORS.md's "6 * non-embedding params" wording).

Output: a table (default) or one JSON object on stdout (--json) with the keys
recipe, tokens_per_s, step_ms, mfu, peak_mem_bytes, batch, seq_len and more;
progress and warnings go to stderr. On out-of-memory it says so, prints a JSON
object with "error" under --json, and exits with status 3.
"""

import argparse
import json
import math
import os
import statistics
import sys
import time

# H100 SXM dense BF16 tensor-core peak (datasheet), FLOP/s. MFU is against this.
H100_SXM_BF16_DENSE_PEAK = 989e12

EXIT_OOM = 3


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def parse_args():
    p = argparse.ArgumentParser(description="transformers BF16 training-throughput benchmark (random init, random data)")
    p.add_argument("--config", required=True, help="a Hugging Face config.json (model_type llama)")
    p.add_argument("--batch", type=int, default=4, help="sequences per step (default 4)")
    p.add_argument("--seq-len", type=int, default=2048, help="tokens per sequence (default 2048)")
    p.add_argument("--steps", type=int, default=20, help="timed steps (default 20)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (default 5)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--compile", action="store_true", help="torch.compile(model) (compiles during warm-up)")
    p.add_argument("--grad-ckpt", action="store_true", help="gradient checkpointing on (default off)")
    p.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate (default 1e-4)")
    p.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay (default 0.1)")
    p.add_argument("--max-grad-norm", type=float, default=0.0,
                   help="clip the gradient norm to this before the step (default 0: no clipping)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--peak-flops", type=float, default=H100_SXM_BF16_DENSE_PEAK,
                   help="FLOP/s that MFU is measured against (default H100 SXM dense BF16, 989e12)")
    p.add_argument("--recipe", default=None,
                   help="name in the output (default transformers-bf16, with -compile / -ckpt appended)")
    a = p.parse_args()
    for name in ("batch", "seq_len", "steps"):
        if getattr(a, name) <= 0:
            p.error("--%s must be positive" % name.replace("_", "-"))
    if a.warmup < 0:
        p.error("--warmup must be non-negative")
    if a.recipe is None:
        a.recipe = "transformers-bf16" + ("-compile" if a.compile else "") + ("-ckpt" if a.grad_ckpt else "")
    return a


def emit_error(args, kind, message):
    """The failure as one JSON object (under --json) and a message on stderr."""
    log("bench_hf: error: " + message)
    if args.json:
        print(json.dumps({"recipe": args.recipe, "batch": args.batch, "seq_len": args.seq_len,
                          "config": args.config, "error": kind, "message": message}), flush=True)


def train_flops_per_token(n_params, vocab, hidden, layers, heads, head_dim, seq_len, tied):
    """(with LM head, without it): halo's LlamaModel::train_flops_per_token."""
    non_embedding = n_params - vocab * hidden * (1 if tied else 2)
    head = vocab * hidden
    # Causal pairs of one row: seq_len * (seq_len + 1) / 2; 4 FLOPs per pair, head
    # and head_dim (QK^T and PV), times 3 for forward + backward, per token.
    attn = 3.0 * layers * 4.0 * heads * head_dim * (seq_len * (seq_len + 1) / 2.0) / seq_len
    return 6.0 * (non_embedding + head) + attn, 6.0 * non_embedding + attn, non_embedding


def build_model(torch, transformers, raw, args):
    from transformers import AutoModelForCausalLM, LlamaConfig

    if raw.get("model_type") != "llama":
        raise SystemExit("bench_hf: %s: model_type %r, expected 'llama'" % (args.config, raw.get("model_type")))
    config = LlamaConfig.from_dict(dict(raw))
    config.use_cache = False
    errors = []
    # transformers >= 4.56 (and 5.x) take dtype=; older ones torch_dtype=. An
    # unknown keyword reaches the model's __init__ and raises TypeError.
    for dtype_key in ("dtype", "torch_dtype"):
        kwargs = {"attn_implementation": "sdpa", dtype_key: torch.bfloat16}
        try:
            with torch.device("cuda"):
                model = AutoModelForCausalLM.from_config(config, **kwargs)
            break
        except TypeError as e:
            errors.append("%s=: %s" % (dtype_key, e))
    else:
        raise RuntimeError("could not build the model: " + "; ".join(errors))
    model.to(device="cuda", dtype=torch.bfloat16)
    bad = [n for n, p in model.named_parameters() if p.dtype != torch.bfloat16 or not p.is_cuda]
    if bad:
        raise RuntimeError("parameters not bf16 on cuda: " + ", ".join(bad[:5]))
    return model


def main():
    args = parse_args()
    with open(args.config) as f:
        raw = json.load(f)

    try:
        import torch
        import transformers
    except ImportError as e:
        raise SystemExit("bench_hf: needs torch and transformers: %s" % e)
    if not torch.cuda.is_available():
        raise SystemExit("bench_hf: no CUDA device")
    oom_types = tuple(t for t in (getattr(torch, "OutOfMemoryError", None),
                                  getattr(torch.cuda, "OutOfMemoryError", None)) if t is not None)

    torch.manual_seed(args.seed)
    device_name = torch.cuda.get_device_name()
    log("bench_hf: torch %s, transformers %s, %s; %s, batch %d x %d" %
        (torch.__version__, transformers.__version__, device_name, args.config, args.batch, args.seq_len))

    B, T = args.batch, args.seq_len
    tokens = B * T
    model = opt = None
    step_i = -1
    try:
        t_build = time.perf_counter()
        model = build_model(torch, transformers, raw, args)
        torch.cuda.synchronize()
        build_s = time.perf_counter() - t_build

        attn_impl = getattr(model.config, "_attn_implementation", None)
        if attn_impl != "sdpa":
            log("bench_hf: warning: attention implementation is %r, not 'sdpa'" % attn_impl)
        emb = model.get_input_embeddings().weight
        out_emb = model.get_output_embeddings()
        tied = out_emb is not None and out_emb.weight.data_ptr() == emb.data_ptr()
        if tied != bool(raw.get("tie_word_embeddings", False)):
            log("bench_hf: warning: embeddings tied=%s but the config says tie_word_embeddings=%s"
                % (tied, raw.get("tie_word_embeddings")))
        n_params = sum(p.numel() for p in model.parameters())  # tied weights once
        vocab, hidden = emb.shape
        layers = int(raw["num_hidden_layers"])
        heads = int(raw["num_attention_heads"])
        head_dim = int(raw.get("head_dim") or hidden // heads)
        flops_tok, flops_tok_no_head, non_embedding = train_flops_per_token(
            n_params, vocab, hidden, layers, heads, head_dim, T, tied)
        log("bench_hf: %.3f B parameters (%.3f B non-embedding), tied=%s, attention %s, built in %.1f s"
            % (n_params / 1e9, non_embedding / 1e9, tied, attn_impl, build_s))

        if args.grad_ckpt:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        # Pure bf16: the AdamW states follow the parameters' dtype.
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), eps=1e-8,
                                weight_decay=args.weight_decay, fused=True)
        fwd = torch.compile(model) if args.compile else model

        # Random tokens, a few batches in rotation (never zeros).
        gen = torch.Generator(device="cuda")
        gen.manual_seed(args.seed + 1)
        n_batches = min(8, args.warmup + args.steps)
        batches = [torch.randint(0, vocab, (B, T), device="cuda", generator=gen, dtype=torch.long)
                   for _ in range(n_batches)]

        def train_step(ids):
            loss = fwd(input_ids=ids, labels=ids, use_cache=False).loss
            loss.backward()
            if args.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loss.detach()

        times, losses = [], []
        torch.cuda.synchronize()
        for step_i in range(args.warmup + args.steps):
            if step_i == args.warmup:
                torch.cuda.reset_peak_memory_stats()  # the peak of the timed (steady-state) steps
            ids = batches[step_i % n_batches]
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            loss = train_step(ids)
            torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            losses.append(loss)
            if step_i >= args.warmup:
                times.append(dt)
            elif step_i == 0:
                log("bench_hf: first step %.1f ms" % (dt * 1e3))
        peak_alloc = torch.cuda.max_memory_allocated()
        peak_reserved = torch.cuda.max_memory_reserved()
    except oom_types as e:
        where = "building the model" if model is None else (
            "setting up" if step_i < 0 else "step %d" % step_i)
        msg = ("CUDA out of memory at batch %d x %d (%s; %s): %s. Try %sa smaller --batch."
               % (B, T, where, args.config, str(e).splitlines()[0] if str(e) else "OOM",
                  "" if args.grad_ckpt else "--grad-ckpt or "))
        emit_error(args, "oom", msg)
        sys.exit(EXIT_OOM)
    except Exception as e:  # anything else: say so in the JSON too, then the traceback
        emit_error(args, "exception", "%s: %s" % (type(e).__name__, str(e).splitlines()[0] if str(e) else ""))
        raise

    loss_values = [float(l) for l in losses]
    if not all(math.isfinite(v) for v in loss_values):
        log("bench_hf: warning: non-finite loss: %s" % loss_values)

    step_s = statistics.median(times)
    step_flops = flops_tok * tokens
    result = {
        "recipe": args.recipe,
        "tokens_per_s": tokens / step_s,
        "step_ms": step_s * 1e3,
        "mfu": step_flops / step_s / args.peak_flops,
        "peak_mem_bytes": peak_alloc,
        "batch": B,
        "seq_len": T,
        "peak_reserved_bytes": peak_reserved,
        "step_ms_min": min(times) * 1e3,
        "step_ms_mean": statistics.mean(times) * 1e3,
        "step_ms_max": max(times) * 1e3,
        "steps": args.steps,
        "warmup": args.warmup,
        "mfu_no_head": flops_tok_no_head * tokens / step_s / args.peak_flops,
        "train_flops_per_token": flops_tok,
        "peak_flops": args.peak_flops,
        "params": n_params,
        "non_embedding_params": non_embedding,
        "tied_embeddings": tied,
        "loss_first": loss_values[0],
        "loss_last": loss_values[-1],
        "config": args.config,
        "attn_implementation": attn_impl,
        "optimizer": "torch.optim.AdamW(fused=True), bf16 params/grads/states, no master weights",
        "compile": args.compile,
        "grad_ckpt": args.grad_ckpt,
        "max_grad_norm": args.max_grad_norm,
        "device": device_name,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    if args.json:
        print(json.dumps(result), flush=True)
    else:
        gib = 1024.0 ** 3
        print("%-26s %10s %9s %7s %9s %9s" % ("recipe", "tokens/s", "step ms", "MFU", "peak GiB", "rsv GiB"))
        print("%-26s %10.0f %9.1f %6.1f%% %9.2f %9.2f" % (
            result["recipe"], result["tokens_per_s"], result["step_ms"], 100 * result["mfu"],
            peak_alloc / gib, peak_reserved / gib))
        print("(%s, batch %d x %d, median of %d steps after %d warm-up; step min %.1f / max %.1f ms; "
              "loss %.3f -> %.3f; MFU vs %.0f TFLOP/s, %.1f%% without the LM head)" % (
                  args.config, B, T, args.steps, args.warmup, result["step_ms_min"], result["step_ms_max"],
                  loss_values[0], loss_values[-1], args.peak_flops / 1e12, 100 * result["mfu_no_head"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
