#!/usr/bin/env python3
"""Writes the model-parity fixtures under tests/fixtures/ with Hugging Face
transformers: tiny random-init Llama (with llama3 RoPE scaling) and Qwen2 (q/k/v
bias, tied embeddings) models, a batch, and the reference logits, loss and every
parameter's gradient, all in float32.

Run where torch and transformers are installed (the GPU machine has both):
    python3 scripts/make_fixtures.py [OUT_DIR]
Each model becomes OUT_DIR/<name>/ with config.json, model.safetensors (the
model as transformers saves it) and reference.safetensors (input_ids, labels,
logits, loss, grad.<parameter name>).
"""
import os
import sys

import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

COMMON = dict(vocab_size=256, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
              rms_norm_eps=1e-5)

MODELS = {
    "llama": (LlamaConfig, LlamaForCausalLM,
              dict(COMMON, rope_theta=10000.0, tie_word_embeddings=False,
                   rope_scaling={"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0,
                                 "high_freq_factor": 4.0, "original_max_position_embeddings": 16})),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM,
              dict(COMMON, rope_theta=1000000.0, tie_word_embeddings=True)),
}


def make(out_dir, name):
    config_cls, model_cls, kwargs = MODELS[name]
    torch.manual_seed(1234)
    config = config_cls(**kwargs)
    config._attn_implementation = "eager"
    model = model_cls(config).float()
    with torch.no_grad():  # larger weights than the default init: gradients far from zero
        for p in model.parameters():
            p.normal_(0.0, 0.08)
    batch, seq = 2, 24
    input_ids = torch.randint(0, config.vocab_size, (batch, seq))
    labels = input_ids.clone()
    labels[0, :5] = -100  # a prompt whose tokens do not count
    out = model(input_ids=input_ids, labels=labels)
    out.loss.backward()

    target = os.path.join(out_dir, name)
    os.makedirs(target, exist_ok=True)
    model.save_pretrained(target, safe_serialization=True)
    ref = {
        "input_ids": input_ids.to(torch.int32).contiguous(),
        "labels": labels.to(torch.int32).contiguous(),
        "logits": out.logits.detach().float().contiguous(),
        "loss": out.loss.detach().float().reshape(1),
    }
    for pname, p in model.named_parameters():
        ref["grad." + pname] = p.grad.detach().float().contiguous()
    save_file(ref, os.path.join(target, "reference.safetensors"), metadata={"format": "pt"})
    print(f"{name}: loss {out.loss.item():.6f}, {len(ref) - 4} gradients -> {target}")


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures")
    for name in MODELS:
        make(out_dir, name)


if __name__ == "__main__":
    main()
