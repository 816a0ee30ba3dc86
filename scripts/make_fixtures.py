#!/usr/bin/env python3
"""Reference fixtures for Granite 4.0 / 4.0-H (`GraniteMoeHybridForCausalLM`, model_type "granitemoehybrid").

Run by hand, never in CI. Last run with:
    python 3.11.7, torch 2.15.0 (CPU), transformers 5.23.0, safetensors 0.8.0, numpy 2.4.6
    (no mamba_ssm / causal_conv1d: transformers' pure-torch Mamba-2 paths)

    python3 scripts/make_fixtures.py [--out DIR] [--seed S] [--only NAME ...]

Writes, for every variant, DIR/<variant>/:
    config.json                        (save_pretrained, then patched for legacy spellings where noted)
    model.safetensors                  (or model-0000x-of-0000y.safetensors + model.safetensors.index.json)
    reference.safetensors              input_ids  I64 [B, T]
                                       logits     F32 [B, T, V]   one full forward, use_cache=False, f32, eval
                                       greedy_ids I64 [B, N]      greedy continuation of each row (batch 1)
and DIR/README.md (only on a full run, i.e. without --only).

Every reference is computed from the model *reloaded from the written directory* with
`from_pretrained(dir, dtype=float32)`, so the patched config.json and the bf16 weights are exactly what the
references describe.
"""

import argparse
import json
import math
import os
import shutil
import struct
import sys
import tempfile

import numpy as np
import torch
from safetensors.torch import load_file

import transformers
from transformers import GraniteMoeHybridConfig, GraniteMoeHybridForCausalLM

B = 3  # rows
T = 21  # prompt length
N = 12  # greedy tokens
MIN_GAP = 1e-3  # required top-1 minus top-2 logit gap at every greedy step
LOGIT_STD = 2.0  # target std of the reference logits (set by scaling the final norm weight)
MAX_ATTEMPTS = 40
MIN_DISTINCT = 6  # distinct tokens required in each row's greedy continuation
EMBED_STD = 0.002
MLP_GAIN = 1.0
UNTIED_EMBED_STD = 0.05

M, A = "linear_attention", "full_attention"  # transformers-5 layer names
LEGACY = {M: "mamba", A: "attention"}

# --------------------------------------------------------------------------------------------------
# Variants
# --------------------------------------------------------------------------------------------------

COMMON = dict(
    vocab_size=256,
    hidden_size=32,
    rms_norm_eps=1e-5,
    hidden_act="silu",
    mamba_expand=2,
    mamba_d_conv=4,
    mamba_conv_bias=True,
    mamba_proj_bias=False,
    max_position_embeddings=4096,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
    tie_word_embeddings=True,
    attention_bias=False,
    position_embedding_type="nope",
)


def _legacy_layer_types(key):
    """config.json patch: layer names `mamba`/`attention` under `key`, as released configs spell them."""

    def patch(cfg):
        names = [LEGACY[t] for t in cfg.pop("layer_types")]
        cfg.pop("layers_block_type", None)
        cfg[key] = names
        return cfg

    return patch


def _chain(*patches):
    def patch(cfg):
        for p in patches:
            cfg = p(cfg)
        return cfg

    return patch


def _d_head_auto(cfg):
    cfg["mamba_d_head"] = "auto"
    return cfg


def _legacy_rope_theta(cfg):
    rp = cfg.pop("rope_parameters")
    assert rp.get("rope_type", "default") == "default", rp
    cfg["rope_theta"] = rp["rope_theta"]
    cfg["rope_scaling"] = None
    return cfg


def _legacy_torch_dtype(cfg):
    cfg["torch_dtype"] = cfg.pop("dtype")
    return cfg


VARIANTS = {
    "hybrid_moe_nope": dict(
        doc="Granite 4.0-H-tiny style MoE hybrid with the awkward knobs turned: layers [mamba, attention, mamba, "
        "attention], 4 routed experts top-2 (intermediate 32) plus the shared MLP (48), H=64, nH=8 x P=16 "
        "(d_in 128), **G=2** B/C groups (also 2 groups in the gated RMSNorm), N=16, K=4, chunk 8 < T (ragged last "
        "chunk), NoPE, GQA 4:2 with head_dim 16 and attention_multiplier 0.125 (not 1/sqrt(16)), "
        "embedding_multiplier 12, residual_multiplier 0.22, logits_scaling 6, tied embeddings. config.json as "
        "transformers 5 writes it (`layer_types` = linear_attention/full_attention, time_step_limit "
        "`[0.0, {\"__float__\": \"Infinity\"}]`).",
        config=dict(
            hidden_size=64,
            num_hidden_layers=4,
            layer_types=[M, A, M, A],
            num_attention_heads=4,
            num_key_value_heads=2,
            attention_multiplier=0.125,
            num_local_experts=4,
            num_experts_per_tok=2,
            intermediate_size=32,
            shared_intermediate_size=48,
            mamba_n_heads=8,
            mamba_d_head=16,
            mamba_n_groups=2,
            mamba_d_state=16,
            mamba_chunk_size=8,
            embedding_multiplier=12.0,
            residual_multiplier=0.22,
            logits_scaling=6.0,
        ),
    ),
    "hybrid_dense": dict(
        doc="Granite 4.0-H-350m/1b style dense hybrid: no routed experts (num_local_experts 0, "
        "num_experts_per_tok 0, so no router/expert tensors; intermediate_size is unused), shared MLP 64, "
        "5 layers [mamba, mamba, attention, mamba, attention], G=1, nH=4 x P=16, N=16, chunk 8, NoPE, "
        "GQA 4:1 (head_dim 8, attention_multiplier 0.125), multipliers 12 / 0.246 / 3 as in h-350m. "
        "config.json is patched to the *released* spelling: `layer_types` with the legacy names "
        "`mamba`/`attention`, and `mamba_d_head: \"auto\"` as a string (resolves to 16).",
        config=dict(
            num_hidden_layers=5,
            layer_types=[M, M, A, M, A],
            num_attention_heads=4,
            num_key_value_heads=1,
            attention_multiplier=0.125,
            num_local_experts=0,
            num_experts_per_tok=0,
            intermediate_size=64,
            shared_intermediate_size=64,
            mamba_n_heads=4,
            mamba_n_groups=1,
            mamba_d_state=16,
            mamba_chunk_size=8,
            embedding_multiplier=12.0,
            residual_multiplier=0.246,
            logits_scaling=3.0,
        ),
        patch=_chain(_legacy_layer_types("layer_types"), _d_head_auto),
    ),
    "hybrid_rope": dict(
        doc="Hybrid with RoPE switched on (`position_embedding_type: \"rope\"`, rope_theta 10000 under "
        "`rope_parameters` as transformers 5 writes it; half-split/NeoX rotation), layers [attention, mamba, "
        "mamba, attention], GQA 4:1 (head_dim 8, attention_multiplier 0.2), MoE with 3 experts and **top-1** "
        "(softmax over one logit = weight 1) plus shared MLP, G=2 with nH=4 (two heads per group), N=8, chunk 8.",
        config=dict(
            num_hidden_layers=4,
            layer_types=[A, M, M, A],
            num_attention_heads=4,
            num_key_value_heads=1,
            attention_multiplier=0.2,
            position_embedding_type="rope",
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            num_local_experts=3,
            num_experts_per_tok=1,
            intermediate_size=24,
            shared_intermediate_size=40,
            mamba_n_heads=4,
            mamba_n_groups=2,
            mamba_d_state=8,
            mamba_chunk_size=8,
            embedding_multiplier=12.0,
            residual_multiplier=0.22,
            logits_scaling=6.0,
        ),
    ),
    "attention_only": dict(
        doc="Non-hybrid Granite 4.0 (350m/1b/micro) style: every layer attention (3 layers), RoPE with "
        "theta 1e7, GQA 4:2 (head_dim 8, attention_multiplier 0.125), dense (shared MLP 64 only), multipliers "
        "12 / 0.263 / 4. config.json patched to the released spelling: `layer_types` = `attention` x3, "
        "top-level `rope_theta: 10000000.0` + `rope_scaling: null` instead of `rope_parameters`; the unused "
        "mamba_* fields are still present, as in the released configs.",
        config=dict(
            num_hidden_layers=3,
            layer_types=[A, A, A],
            num_attention_heads=4,
            num_key_value_heads=2,
            attention_multiplier=0.125,
            position_embedding_type="rope",
            rope_parameters={"rope_type": "default", "rope_theta": 1e7},
            num_local_experts=0,
            num_experts_per_tok=0,
            intermediate_size=64,
            shared_intermediate_size=64,
            mamba_n_heads=4,
            mamba_n_groups=1,
            mamba_d_state=16,
            mamba_chunk_size=8,
            embedding_multiplier=12.0,
            residual_multiplier=0.263,
            logits_scaling=4.0,
        ),
        patch=_chain(_legacy_layer_types("layer_types"), _legacy_rope_theta),
    ),
    "mamba_only": dict(
        doc="Every layer Mamba-2 (3 layers, no attention at all), dense. Geometry off the released grid to "
        "catch hard-coded constants: nH=8 x P=8 (d_in 64), G=4 (two heads per group), N=8, **d_conv 3**, "
        "**chunk 5** (T=21 gives 4 full chunks + 1), rms_norm_eps 1e-6, multipliers 12 / 0.22 / 6. "
        "transformers' cache cannot hold a mamba-only stack: `generate()`, and even a plain forward with the "
        "config default `use_cache: true`, raise `ValueError` from `get_seq_length` (asserted by the script), so "
        "`logits` use `use_cache=False` as everywhere and greedy_ids come from an explicit no-cache argmax loop "
        "(full forward each step).",
        config=dict(
            num_hidden_layers=3,
            layer_types=[M, M, M],
            num_attention_heads=4,
            num_key_value_heads=4,
            num_local_experts=0,
            num_experts_per_tok=0,
            intermediate_size=48,
            shared_intermediate_size=48,
            mamba_n_heads=8,
            mamba_n_groups=4,
            mamba_d_state=8,
            mamba_d_conv=3,
            mamba_chunk_size=5,
            rms_norm_eps=1e-6,
            embedding_multiplier=12.0,
            residual_multiplier=0.22,
            logits_scaling=6.0,
        ),
    ),
    "untied_multipliers": dict(
        doc="`tie_word_embeddings: false` with a real, independent `lm_head.weight`; non-trivial multipliers "
        "(embedding 3.5, residual 0.5, logits_scaling 2.5, attention_multiplier 0.3); `attention_bias: true` "
        "(q/k/v/o biases); MoE top-3 of 5 experts (intermediate 16, shared 32); layers [attention, mamba, "
        "attention, mamba], NoPE, MHA (nkv = nh = 4). config.json patched to name the layer list "
        "`layers_block_type` (the config alias) with legacy names, and `torch_dtype` instead of `dtype`.",
        config=dict(
            num_hidden_layers=4,
            layer_types=[A, M, A, M],
            num_attention_heads=4,
            num_key_value_heads=4,
            attention_multiplier=0.3,
            attention_bias=True,
            num_local_experts=5,
            num_experts_per_tok=3,
            intermediate_size=16,
            shared_intermediate_size=32,
            mamba_n_heads=4,
            mamba_n_groups=1,
            mamba_d_state=16,
            mamba_chunk_size=8,
            embedding_multiplier=3.5,
            residual_multiplier=0.5,
            logits_scaling=2.5,
            tie_word_embeddings=False,
        ),
        patch=_chain(_legacy_layer_types("layers_block_type"), _legacy_torch_dtype),
    ),
    "bf16_sharded": dict(
        doc="Hybrid MoE checkpoint stored as **bf16** and sharded into several `model-0000i-of-0000n.safetensors` "
        "files with `model.safetensors.index.json` (config says `dtype: bfloat16`). Layers [mamba, attention, "
        "mamba, mamba, attention], 4 experts top-2, vocab 384, G=1, N=16, chunk 16 (< T), NoPE. The reference "
        "logits are an f32 forward of the bf16 weights upcast to f32 (exact), so an f32 engine must match them "
        "to the usual tolerance.",
        config=dict(
            vocab_size=384,
            num_hidden_layers=5,
            layer_types=[M, A, M, M, A],
            num_attention_heads=4,
            num_key_value_heads=2,
            attention_multiplier=0.125,
            num_local_experts=4,
            num_experts_per_tok=2,
            intermediate_size=32,
            shared_intermediate_size=32,
            mamba_n_heads=4,
            mamba_n_groups=1,
            mamba_d_state=16,
            mamba_chunk_size=16,
            embedding_multiplier=12.0,
            residual_multiplier=0.22,
            logits_scaling=6.0,
        ),
        dtype=torch.bfloat16,
        max_shard_size=80_000,
    ),
    "time_step_limit": dict(
        doc="Dense hybrid [mamba, attention, mamba, mamba] with `time_step_limit: [0.05, 0.5]`; dt_bias is spread "
        "so that softplus(dt) falls on both sides of the limits. transformers applies the clamp only in the "
        "chunked (multi-token) scan, not in the single-token decode update; see the time_step_limit section "
        "below for what that means for `logits` and `greedy_ids`.",
        config=dict(
            num_hidden_layers=4,
            layer_types=[M, A, M, M],
            num_attention_heads=4,
            num_key_value_heads=2,
            attention_multiplier=0.125,
            num_local_experts=0,
            num_experts_per_tok=0,
            intermediate_size=64,
            shared_intermediate_size=64,
            mamba_n_heads=4,
            mamba_n_groups=1,
            mamba_d_state=16,
            mamba_chunk_size=8,
            time_step_limit=[0.05, 0.5],
            embedding_multiplier=12.0,
            residual_multiplier=0.22,
            logits_scaling=6.0,
        ),
    ),
}

# --------------------------------------------------------------------------------------------------
# Weight init
# --------------------------------------------------------------------------------------------------


def randomize(model, gen):
    """Re-draw every parameter (including the ones transformers sets to constants) so that mistakes show and
    greedy output is varied: projections std 0.5/sqrt(fan_in), small embeddings, random norms/A/D/dt/conv."""
    cfg = model.config

    def normal(shape, std, mean=0.0):
        return torch.randn(shape, generator=gen, dtype=torch.float32) * std + mean

    def uniform(shape, lo, hi):
        return torch.rand(shape, generator=gen, dtype=torch.float32) * (hi - lo) + lo

    with torch.no_grad():
        for name, p in model.named_parameters(remove_duplicate=True):
            shape = p.shape
            if name == "model.embed_tokens.weight":
                v = normal(shape, EMBED_STD if cfg.tie_word_embeddings else UNTIED_EMBED_STD)
            elif name == "lm_head.weight":
                v = normal(shape, 1.0 / math.sqrt(shape[1]))
            elif name.endswith("norm.weight") or name.endswith("layernorm.weight"):
                v = uniform(shape, 0.5, 1.5)
            elif name.endswith("mamba.A_log"):
                v = uniform(shape, -1.0, 2.0)  # A in [-7.4, -0.37]
            elif name.endswith("mamba.dt_bias"):
                v = uniform(shape, -3.5, 0.5)  # softplus: 0.03 .. 0.97 before the input-dependent part
            elif name.endswith("mamba.D"):
                v = normal(shape, 0.5, 1.0)
            elif name.endswith("conv1d.weight"):
                v = normal(shape, 1.0 / math.sqrt(shape[-1]))
            elif name.endswith("conv1d.bias"):
                v = normal(shape, 0.2)
            elif name.endswith("router.weight"):
                v = normal(shape, 1.5 / math.sqrt(shape[-1]))
            elif name.endswith(".bias"):
                v = normal(shape, 0.2)
            elif "shared_mlp" in name or name.endswith("experts.gate_up_proj") or name.endswith("experts.down_proj"):
                # MLPs a bit stronger than the mixers, otherwise attention-only stacks converge to one token
                v = normal(shape, MLP_GAIN / math.sqrt(shape[-1]))
            elif p.dim() == 2:
                v = normal(shape, 0.5 / math.sqrt(shape[-1]))
            else:
                raise RuntimeError(f"no init rule for {name} {tuple(shape)}")
            p.copy_(v.to(p.dtype))


def calibrate(model, input_ids):
    """Scale the final norm weight so the logits have std LOGIT_STD (logits are linear in it)."""
    with torch.no_grad():
        std = model(input_ids=input_ids, use_cache=False).logits.float().std().item()
        model.model.norm.weight.mul_(LOGIT_STD / std)


# --------------------------------------------------------------------------------------------------
# Reference computation
# --------------------------------------------------------------------------------------------------


def top2_gap(logits):
    v = logits.float().topk(2, dim=-1).values
    return (v[..., 0] - v[..., 1]).min().item()


@torch.no_grad()
def greedy_nocache(model, row, n):
    ids = row[None]
    steps = []
    for _ in range(n):
        lg = model(input_ids=ids, use_cache=False).logits[0, -1]
        steps.append(lg)
        ids = torch.cat([ids, lg.argmax().view(1, 1)], dim=1)
    return ids[0, row.numel():], torch.stack(steps)


@torch.no_grad()
def greedy_generate(model, row, n):
    model.generation_config.eos_token_id = None
    model.generation_config.bos_token_id = None
    out = model.generate(
        input_ids=row[None],
        attention_mask=torch.ones_like(row[None]),
        max_new_tokens=n,
        min_new_tokens=0,
        do_sample=False,
        use_cache=True,
        eos_token_id=None,
        pad_token_id=model.config.pad_token_id,
        output_logits=True,
        return_dict_in_generate=True,
    )
    toks = out.sequences[0, row.numel():]
    lg = torch.stack([s[0] for s in out.logits])
    assert toks.numel() == n, f"generate stopped early: {toks.numel()} tokens"
    assert torch.equal(toks, lg.argmax(-1)), "generate did not pick the raw argmax"
    return toks, lg


def save_deterministic(tensors, path, metadata):
    """safetensors writer with a sorted header, so re-running the script reproduces the file byte for byte
    (safetensors' own writer orders `__metadata__` arbitrarily)."""
    dtypes = {torch.float32: "F32", torch.int64: "I64"}
    header, blobs, off = {"__metadata__": dict(sorted(metadata.items()))}, [], 0
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        b = t.numpy().tobytes()
        header[name] = {"dtype": dtypes[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    check = load_file(path)
    assert sorted(check) == sorted(tensors) and all(torch.equal(check[k], tensors[k]) for k in tensors)


def has_attention(cfg):
    return any(t != M for t in cfg.layer_types)


def write_model_dir(model, out_dir, spec):
    dtype = spec.get("dtype", torch.float32)
    model = model.to(dtype)
    kw = {}
    if "max_shard_size" in spec:
        kw["max_shard_size"] = spec["max_shard_size"]
    model.save_pretrained(out_dir, **kw)
    model.to(torch.float32)
    # the fixture only needs config + weights
    for extra in ("generation_config.json",):
        p = os.path.join(out_dir, extra)
        if os.path.exists(p):
            os.remove(p)
    cfg_path = os.path.join(out_dir, "config.json")
    if spec.get("patch"):
        with open(cfg_path) as f:
            cfg = json.load(f)
        cfg = spec["patch"](cfg)
        with open(cfg_path, "w") as f:
            json.dump(cfg, f, indent=2, sort_keys=True)
            f.write("\n")


def build_variant(name, spec, seed, out_root):
    base_cfg = dict(COMMON)
    base_cfg.update(spec["config"])
    dtype = spec.get("dtype", torch.float32)
    for attempt in range(MAX_ATTEMPTS):
        s = seed * 1000 + attempt
        gen = torch.Generator().manual_seed(s)
        cfg = GraniteMoeHybridConfig(**base_cfg)
        cfg._attn_implementation = "eager"
        torch.manual_seed(s)
        model = GraniteMoeHybridForCausalLM(cfg).eval()
        randomize(model, gen)
        input_ids = torch.randint(0, cfg.vocab_size, (B, T), generator=gen, dtype=torch.int64)
        calibrate(model, input_ids)
        if dtype != torch.float32:
            model = model.to(dtype).to(torch.float32)  # round the weights once, here

        tmp = tempfile.mkdtemp(prefix=f"fixture_{name}_")
        write_model_dir(model, tmp, spec)

        # everything below uses the model as reloaded from disk
        ref = GraniteMoeHybridForCausalLM.from_pretrained(tmp, dtype=torch.float32, attn_implementation="eager").eval()
        assert ref.config.layer_types == cfg.layer_types, (ref.config.layer_types, cfg.layer_types)
        assert ref.config.tie_word_embeddings == cfg.tie_word_embeddings
        with torch.no_grad():
            logits = ref(input_ids=input_ids, use_cache=False).logits.float()
            same = model(input_ids=input_ids, use_cache=False).logits.float()
        reload_diff = (logits - same).abs().max().item()
        assert reload_diff == 0.0, f"{name}: reloaded model differs from the built one by {reload_diff}"

        info = dict(seed=s, max_abs_logit=logits.abs().max().item(), logit_std=logits.std().item())
        greedy, gaps, cache_vs_full, tokens_disagree = [], [], 0.0, 0
        ok = True
        for b in range(B):
            row = input_ids[b]
            toks_nc, lg_nc = greedy_nocache(ref, row, N)
            gaps.append(top2_gap(lg_nc))
            if has_attention(ref.config):
                toks, lg = greedy_generate(ref, row, N)
                gaps.append(top2_gap(lg))
                if torch.equal(toks, toks_nc):
                    cache_vs_full = max(cache_vs_full, (lg - lg_nc).abs().max().item())
                else:
                    tokens_disagree += 1
            else:
                toks = toks_nc
            if len(set(toks.tolist())) < MIN_DISTINCT:
                ok = False  # degenerate (repeating) continuation
            greedy.append(toks)
        info.update(min_gap=min(gaps), cache_vs_full=cache_vs_full, tokens_disagree=tokens_disagree)
        if info["min_gap"] < MIN_GAP:
            ok = False
        if tokens_disagree and not spec.get("allow_cache_divergence"):
            ok = False
        if not ok:
            print(f"  {name}: attempt {attempt} rejected ({info})", file=sys.stderr)
            shutil.rmtree(tmp)
            continue

        greedy_ids = torch.stack(greedy).to(torch.int64)
        info["extra"] = variant_checks(name, ref, input_ids, greedy_ids, logits)
        out_dir = os.path.join(out_root, name)
        if os.path.exists(out_dir):
            shutil.rmtree(out_dir)
        shutil.move(tmp, out_dir)
        save_deterministic(
            {
                "input_ids": input_ids.contiguous(),
                "logits": logits.contiguous(),
                "greedy_ids": greedy_ids.contiguous(),
            },
            os.path.join(out_dir, "reference.safetensors"),
            metadata={
                "transformers": transformers.__version__,
                "torch": torch.__version__,
                "variant": name,
                "seed": str(s),
                "greedy": "generate(use_cache=True)" if has_attention(ref.config) else "no-cache argmax loop",
            },
        )
        info["files"] = sorted(os.listdir(out_dir))
        info["greedy_ids"] = greedy_ids.tolist()
        return info
    raise RuntimeError(f"{name}: no acceptable seed in {MAX_ATTEMPTS} attempts")


def set_limit(model, limit):
    model.config.time_step_limit = tuple(limit)
    for layer in model.model.layers:
        if layer.mamba is not None:
            layer.mamba.time_step_limit = tuple(limit)


@torch.no_grad()
def variant_checks(name, model, input_ids, greedy_ids, logits):
    """Variant-specific facts worth recording (and asserting)."""
    extra = {}
    if name == "mamba_only":
        # transformers cannot build/use a cache for a stack without attention layers: even a plain forward with
        # the config default use_cache=True raises, and so does generate().
        for what, fn in (
            ("forward(use_cache=True)", lambda: model(input_ids=input_ids[:1], use_cache=True)),
            ("generate()", lambda: model.generate(input_ids=input_ids[:1], max_new_tokens=2, do_sample=False)),
        ):
            try:
                fn()
                raise AssertionError(f"mamba-only {what} unexpectedly worked; greedy_ids could use the cache now")
            except ValueError as e:
                assert "get_seq_length" in str(e), e
                extra[what] = "raises ValueError (get_seq_length)"
    if name == "time_step_limit":
        # 1. how often does the clamp bite on the prefill path?
        lo, hi = model.config.time_step_limit
        below = above = total = 0
        hooks = []

        def hook(mod, args, kwargs, out):
            nonlocal below, above, total
            h = mod.input_layernorm(args[0])
            zxbcdt = mod.mamba.in_proj(h)
            dt = torch.nn.functional.softplus(zxbcdt[..., -mod.mamba.num_heads:] + mod.mamba.dt_bias)
            below += (dt < lo).sum().item()
            above += (dt > hi).sum().item()
            total += dt.numel()

        for layer in model.model.layers:
            if layer.mamba is not None:
                hooks.append(layer.register_forward_hook(hook, with_kwargs=True))
        model(input_ids=input_ids, use_cache=False)
        for hk in hooks:
            hk.remove()
        extra["dt_below_lo"] = below / total
        extra["dt_above_hi"] = above / total
        assert below > 0 and above > 0, "time_step_limit does not bite on both sides"
        # 2. full-forward logits with the clamp removed: how much does it matter?
        set_limit(model, (0.0, float("inf")))
        unclamped = model(input_ids=input_ids, use_cache=False).logits.float()
        extra["full_forward_clamp_effect"] = (unclamped - logits).abs().max().item()
        set_limit(model, (lo, hi))
        # 3. decode path: HF's single-token update ignores the limit. Compare cached decode logits with the
        #    full-forward (clamped everywhere) logits for the same tokens.
        def decode_vs_full():
            diffs = []
            for b in range(input_ids.shape[0]):
                seq = torch.cat([input_ids[b], greedy_ids[b]])[None]
                full = model(input_ids=seq, use_cache=False).logits[0].float()
                out = model(input_ids=seq[:, :T], use_cache=True)
                pkv = out.past_key_values
                dec = [out.logits[0, -1].float()]
                for t in range(T, seq.shape[1] - 1):
                    o = model(input_ids=seq[:, t:t + 1], past_key_values=pkv, use_cache=True)
                    pkv = o.past_key_values
                    dec.append(o.logits[0, -1].float())
                dec = torch.stack(dec)
                diffs.append((dec[1:] - full[T:-1]).abs().max().item())
                assert (dec[0] - full[T - 1]).abs().max().item() < 1e-4  # prefill itself is identical
            return max(diffs)

        extra["decode_vs_full_max_diff"] = decode_vs_full()
        # control: with the limit removed, cached decode and full forward agree again, so the difference above
        # is the missing clamp on the single-token path and nothing else
        set_limit(model, (0.0, float("inf")))
        extra["decode_vs_full_without_limit"] = decode_vs_full()
        set_limit(model, (lo, hi))
        assert extra["decode_vs_full_max_diff"] > 1e-2 and extra["decode_vs_full_without_limit"] < 1e-4, extra
    return extra


# --------------------------------------------------------------------------------------------------
# README
# --------------------------------------------------------------------------------------------------


def write_readme(out_root, infos, seed):
    lines = []
    lines.append("# Granite 4.0 / 4.0-H reference fixtures (`GraniteMoeHybridForCausalLM`)\n")
    lines.append(
        "Tiny random-weight `granitemoehybrid` checkpoints plus transformers reference outputs, for testing the "
        "Rust implementation against HF to ~1e-4 in f32. Generated by `scripts/make_fixtures.py` (run by hand, "
        "never in CI); see the spec in `/work/shared/reference/granite-4.0-h.md`.\n"
    )
    lines.append("## How they were made\n")
    lines.append("```")
    lines.append(f"python3 scripts/make_fixtures.py --seed {seed}")
    lines.append("```")
    lines.append(
        f"with Python {sys.version.split()[0]}, torch {torch.__version__} (CPU), transformers "
        f"{transformers.__version__}, safetensors {__import__('safetensors').__version__}, numpy {np.__version__}. "
        "`mamba_ssm` and `causal_conv1d` were not installed, so transformers ran its pure-torch Mamba-2 paths "
        "(chunked SSD scan for multi-token calls, single-step update for decode). Attention ran with the eager "
        "implementation.\n"
    )
    lines.append(
        "Weights: every parameter is re-drawn, including the ones transformers initialises to constants "
        "(`A_log`, `D`, `dt_bias`, all RMSNorm weights, `conv1d` weight and bias): attention and Mamba "
        f"projections std 0.5/sqrt(fan_in), shared-MLP and expert weights {MLP_GAIN:g}/sqrt(fan_in), router "
        f"1.5/sqrt(H), embeddings std {EMBED_STD:g} when tied (small, or the tied head just repeats the current "
        f"token) and {UNTIED_EMBED_STD:g} when untied, untied lm_head 1/sqrt(H), norm weights U(0.5, 1.5), "
        "A_log U(-1, 2), dt_bias U(-3.5, 0.5), D N(1, 0.5), conv weight N(0, 1/K), biases N(0, 0.2). The final "
        "norm weight is then scaled so the logits have std 2. A seed is accepted only if, at every greedy step "
        f"of every row, the top-1 logit beats the top-2 by at least {MIN_GAP:g} (in both the cached and the "
        f"no-cache run), and each row's continuation has at least {MIN_DISTINCT} distinct tokens.\n"
    )
    lines.append("## reference.safetensors\n")
    lines.append(
        f"- `input_ids` I64 [{B}, {T}]: random token ids, rows independent, no padding.\n"
        f"- `logits` F32 [{B}, {T}, V]: transformers logits of **one full forward** of the whole `input_ids` batch "
        "without cache (`use_cache=False`), model loaded from this directory with `dtype=float32`, eval mode. "
        "Logits are already divided by `logits_scaling`.\n"
        f"- `greedy_ids` I64 [{B}, {N}]: greedy continuation of {N} new tokens after each row's full `input_ids`, "
        "each row run alone (batch size 1, so no padding anywhere), no EOS stop. Produced by "
        "`model.generate(do_sample=False, use_cache=True, eos_token_id=None)` (prefill, then single-token decode "
        "through transformers' cache); for `mamba_only` (no attention layer; transformers' cache cannot handle "
        "it) by an explicit argmax loop doing a full no-cache forward per step. For every variant with attention, "
        "the no-cache loop was also run and gave identical tokens.\n"
        "- Metadata (`__metadata__`): transformers/torch versions, variant name, seed, how greedy was produced.\n"
    )
    lines.append(
        "All references are computed from the model **reloaded from the fixture directory** "
        "(`from_pretrained(dir, dtype=torch.float32)`), after any config.json patching, and the script asserts that "
        "the reloaded model gives bit-identical logits to the model it built. Each directory holds only "
        "`config.json`, the weights (`model.safetensors`, or shards + `model.safetensors.index.json`) and "
        "`reference.safetensors`; tensor names are the on-disk (legacy) names of spec §3 "
        "(`block_sparse_moe.input_linear.weight`, `...output_linear.weight`, `...router.layer.weight`).\n"
    )
    lines.append("## Variants\n")
    lines.append("| variant | seed | max abs logit | min top-2 gap (greedy) | max cached-decode vs full-forward diff |")
    lines.append("|---|---|---|---|---|")
    for name, info in infos.items():
        cvf = f"{info['cache_vs_full']:.1e}" if has_attention_name(name) else "n/a (no cache)"
        if name == "time_step_limit":
            cvf = f"{info['extra']['decode_vs_full_max_diff']:.1e} (see below)"
        lines.append(f"| `{name}` | {info['seed']} | {info['max_abs_logit']:.3f} | {info['min_gap']:.2e} | {cvf} |")
    lines.append("")
    for name in infos:
        lines.append(f"**`{name}`.** {VARIANTS[name]['doc']}\n")
    if "time_step_limit" in infos:
        ex = infos["time_step_limit"]["extra"]
        lines.append("## time_step_limit: where transformers clamps dt\n")
        lines.append(
            "Checked in transformers 5.23.0 source and numerically. `mamba2_chunk_scan` (used for every call with "
            "more than one new token, with or without a cache) does `dt = clamp(softplus(dt + dt_bias), "
            "*time_step_limit)`. `mamba2_selective_state_update` (used for a single new token when the cache "
            "already holds state, i.e. every decode step of `generate`) receives no `dt_limit` and **does not "
            "clamp**. Measured on this fixture:\n"
        )
        lines.append(
            f"- on the prefill, {100 * ex['dt_below_lo']:.0f}% of the dt values are below 0.05 and "
            f"{100 * ex['dt_above_hi']:.0f}% above 0.5, so the clamp matters: removing it changes the full-forward "
            f"logits by up to {ex['full_forward_clamp_effect']:.2f};\n"
            f"- the reference `logits` (one full forward, no cache) therefore include the clamp at **every** "
            "position;\n"
            f"- HF's cached decode steps (prefill clamped, then unclamped single-token updates) differ from the "
            f"clamped full forward over the same tokens by up to {ex['decode_vs_full_max_diff']:.2f} in the logits "
            f"(control: with the limit removed from the same model the two agree to "
            f"{ex['decode_vs_full_without_limit']:.1e});\n"
            "- `greedy_ids` are HF `generate` output, i.e. prefill with the clamp and **decode steps without it**. "
            "The seed was chosen so that the greedy tokens are nevertheless the same as those of the clamped "
            "no-cache argmax loop (clamp everywhere), with a top-2 gap of at least "
            f"{MIN_GAP:g} in both runs. So an engine that clamps on decode too and one that copies HF's asymmetry "
            "both pass `greedy_ids`; only per-step decode logits (not stored) would tell them apart.\n"
        )
    lines.append("## config.json quirks covered\n")
    lines.append(
        "- `layer_types` with transformers-5 names (`linear_attention`/`full_attention`): hybrid_moe_nope, "
        "hybrid_rope, mamba_only, bf16_sharded, time_step_limit. With released names (`mamba`/`attention`): "
        "hybrid_dense, attention_only. Under the alias key `layers_block_type`: untied_multipliers.\n"
        "- `time_step_limit`: `[0.0, {\"__float__\": \"Infinity\"}]` as transformers 5.23 writes the default "
        "(all variants but time_step_limit); `[0.05, 0.5]` in time_step_limit.\n"
        "- `mamba_d_head: \"auto\"` string: hybrid_dense. Top-level `rope_theta` (no `rope_parameters`): "
        "attention_only. `torch_dtype` instead of `dtype`: untied_multipliers. `dtype: bfloat16`: bf16_sharded.\n"
        "- `position_embedding_type`: `\"nope\"` except hybrid_rope and attention_only (`\"rope\"`).\n"
    )
    with open(os.path.join(out_root, "README.md"), "w") as f:
        f.write("\n".join(lines))


def has_attention_name(name):
    cfg = dict(COMMON)
    cfg.update(VARIANTS[name]["config"])
    return any(t != M for t in cfg["layer_types"])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--out", default=os.path.join(repo, "tests", "fixtures", "granite_hybrid"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", nargs="+", choices=list(VARIANTS), default=None)
    args = ap.parse_args()

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    os.makedirs(args.out, exist_ok=True)
    names = args.only or list(VARIANTS)
    infos = {}
    for i, name in enumerate(VARIANTS):
        if name not in names:
            continue
        info = build_variant(name, VARIANTS[name], args.seed * 100 + i + 1, args.out)
        infos[name] = info
        print(
            f"{name:20s} seed={info['seed']:6d} max|logit|={info['max_abs_logit']:.3f} std={info['logit_std']:.2f} "
            f"min_gap={info['min_gap']:.2e} cache_vs_full={info['cache_vs_full']:.1e} "
            f"files={info['files']}"
        )
        if info["extra"]:
            print(f"{'':20s} {info['extra']}")
        print(f"{'':20s} greedy={info['greedy_ids']}")
    if args.only is None:
        write_readme(args.out, infos, args.seed)
        print(f"wrote {os.path.join(args.out, 'README.md')}")
    else:
        print("(--only given: README.md not rewritten)")


if __name__ == "__main__":
    main()
