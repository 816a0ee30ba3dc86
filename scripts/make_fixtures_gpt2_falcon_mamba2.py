#!/usr/bin/env python3
"""Reference fixtures for GPT-2 (`GPT2LMHeadModel`), Falcon (`FalconForCausalLM`, rotary forms) and pure Mamba2
(`Mamba2ForCausalLM`).

Run by hand, never in CI. Pinned to, and last run with:
    python 3.11.7, torch 2.15.0 (CPU), transformers 5.23.0, safetensors 0.8.0, numpy 2.4.6
    (no mamba_ssm / causal_conv1d: transformers' pure-torch Mamba-2 paths)

    python3 scripts/make_fixtures_gpt2_falcon_mamba2.py [--seed S] [--only ARCH/VARIANT ...]

Writes tests/fixtures/<arch>/<variant>/{config.json, model.safetensors, reference.safetensors} in exactly the
format of the Granite fixtures (see scripts/make_fixtures.py, whose constants and greedy helpers are reused):
    input_ids  I64 [B, T]
    logits     F32 [B, T, V]   one full forward, use_cache=False, f32, eval
    greedy_ids I64 [B, N]      greedy continuation of each row alone: generate(do_sample=False, use_cache=True)
and tests/fixtures/<arch>/README.md (only on a full run, i.e. without --only).

Every reference is computed from the model *reloaded from the written directory* with
`from_pretrained(dir, dtype=float32)` after any config.json / tensor-name patching, and the script asserts that the
reloaded model gives bit-identical logits to the model it built (so a patch cannot silently change the model).
"""

import argparse
import json
import math
import os
import shutil
import sys
import tempfile

import numpy as np
import torch
from safetensors.torch import load_file, save_file

import transformers
from transformers import (
    FalconConfig,
    FalconForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    Mamba2Config,
    Mamba2ForCausalLM,
)
from transformers.pytorch_utils import Conv1D

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures as mf  # noqa: E402  (shared constants and greedy helpers)

assert transformers.__version__ == "5.23.0", f"pinned to transformers 5.23.0, found {transformers.__version__}"

B, T, N = mf.B, mf.T, mf.N
MIN_GAP, LOGIT_STD, MIN_DISTINCT = mf.MIN_GAP, mf.LOGIT_STD, mf.MIN_DISTINCT
MAX_ATTEMPTS = 60
UNTIED_EMBED_STD = 0.05
# Per-architecture init (see randomize). The Granite recipe (tiny tied embedding, projections 0.5/sqrt(fan_in)) makes
# the LayerNorm transformers collapse to one repeated token: the first residual update swamps the tiny embedding
# and near-uniform attention averages the rest away. A larger tied embedding and sharper attention fix that.
INIT = {
    "gpt2": dict(tied_embed_std=0.2, proj_gain=1.5, mlp_gain=1.0),
    "falcon": dict(tied_embed_std=0.2, proj_gain=1.5, mlp_gain=1.0),
    "mamba2": dict(tied_embed_std=0.002, proj_gain=0.5, mlp_gain=1.0),
}

# --------------------------------------------------------------------------------------------------
# config.json / checkpoint patches (applied to the saved directory before the reference is computed)
# --------------------------------------------------------------------------------------------------


def drop_keys(*keys):
    def patch(cfg):
        for k in keys:
            cfg.pop(k, None)
        return cfg

    return patch


def set_keys(**kv):
    def patch(cfg):
        cfg.update(kv)
        return cfg

    return patch


def legacy_rope_theta(cfg):
    rp = cfg.pop("rope_parameters")
    assert rp.get("rope_type", "default") == "default", rp
    cfg["rope_theta"] = rp["rope_theta"]
    return cfg


def chain(*patches):
    def patch(cfg):
        for p in patches:
            cfg = p(cfg)
        return cfg

    return patch


def openai_tensor_layout(out_dir, cfg):
    """Rewrite model.safetensors as OpenAI's original GPT-2 upload lays it out: no `transformer.` prefix, no
    lm_head (tied), and the legacy causal-mask buffers `h.N.attn.bias` [1, 1, P, P] (ignored by transformers)."""
    path = os.path.join(out_dir, "model.safetensors")
    tensors = load_file(path)
    out = {}
    for k, v in tensors.items():
        if k == "lm_head.weight":
            continue
        assert k.startswith("transformer."), k
        out[k[len("transformer."):]] = v
    p = cfg["n_positions"]
    mask = torch.tril(torch.ones(p, p, dtype=torch.float32)).view(1, 1, p, p)
    for i in range(cfg["n_layer"]):
        out[f"h.{i}.attn.bias"] = mask.clone()
    save_file(out, path, metadata={"format": "pt"})


# --------------------------------------------------------------------------------------------------
# Variants
# --------------------------------------------------------------------------------------------------

GPT2_COMMON = dict(vocab_size=256, n_embd=32, n_head=4, n_positions=64, bos_token_id=1, eos_token_id=2)
FALCON_COMMON = dict(vocab_size=256, bos_token_id=1, eos_token_id=2, alibi=False)
MAMBA2_COMMON = dict(vocab_size=256, hidden_size=32, expand=2, bos_token_id=1, eos_token_id=2, pad_token_id=0)

ARCHS = {
    "gpt2": dict(
        title="GPT-2 reference fixtures (`GPT2LMHeadModel`)",
        config_cls=GPT2Config,
        model_cls=GPT2LMHeadModel,
        final_norm="transformer.ln_f",
        variants={
            "tied": dict(
                doc="GPT-2 as released: 3 blocks, n_embd 32, 4 heads (head_dim 8), n_positions 64, `gelu_new` "
                "(tanh approximation), n_inner null (MLP 128), head tied to `wte`, biases everywhere, "
                "`transformer.`-prefixed tensor names with `c_attn`/`c_proj`/`c_fc` stored as Conv1D `[in, out]`. "
                "config.json exactly as transformers 5 writes it.",
                config=dict(n_layer=3),
            ),
            "openai_layout": dict(
                doc="The checkpoint layout of OpenAI's original upload: tensor names **without** the `transformer.` "
                "prefix, no `lm_head.weight`, and the legacy causal-mask buffers `h.N.attn.bias` [1, 1, 64, 64] that "
                "transformers ignores. Also `scale_attn_by_inverse_layer_idx: true` (block i's scores divided by "
                "i + 1 on top of 1/sqrt(head_dim)), `n_inner: 48`, `layer_norm_epsilon: 1e-4`, and config.json "
                "without `activation_function` / `tie_word_embeddings` / `scale_attn_weights` keys, so their "
                "defaults (gelu_new, tied, true) must be known. 2 blocks.",
                config=dict(n_layer=2, n_inner=48, layer_norm_epsilon=1e-4, scale_attn_by_inverse_layer_idx=True),
                patch=drop_keys("activation_function", "tie_word_embeddings", "scale_attn_weights"),
                files=openai_tensor_layout,
            ),
        },
    ),
    "falcon": dict(
        title="Falcon reference fixtures (`FalconForCausalLM`, rotary forms)",
        config_cls=FalconConfig,
        model_cls=FalconForCausalLM,
        final_norm="transformer.ln_f",
        variants={
            "falcon7b_multi_query": dict(
                doc="The falcon-7b form: `multi_query: true` (one KV head), `parallel_attn: true` (attention and "
                "MLP both read `input_layernorm(x)`, both added to x), `new_decoder_architecture: false`, no biases, "
                "exact-erf `gelu`, rotary (theta 10000, half-split), tied head. 3 layers, hidden 32, 4 heads "
                "(head_dim 8). config.json patched to the shape of the released falcon-7b config: no "
                "`ffn_hidden_size` (so 4 x hidden = 128), no `num_ln_in_parallel_attn`, no `rope_parameters` / "
                "`rope_theta` (default 10000); it keeps **`num_kv_heads: 4`**, which multi-query must ignore "
                "(`query_key_value` is [q x 4 | k | v] = 48 rows).",
                config=dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, num_kv_heads=4,
                            multi_query=True, parallel_attn=True, new_decoder_architecture=False, bias=False),
                patch=drop_keys("ffn_hidden_size", "num_ln_in_parallel_attn", "rope_parameters"),
            ),
            "new_decoder_architecture": dict(
                doc="The falcon-40b/180b form: `new_decoder_architecture: true` with **6 query heads over 2 KV heads** "
                "(3 per group; `query_key_value` interleaves per group as [q q q k v] x 2), two LayerNorms `ln_attn` "
                "and `ln_mlp`, `bias: true` (so the fused bias is split like the weight), `ffn_hidden_size: 96`, "
                "untied `lm_head`, rotary theta 10000. 2 layers, hidden 48 (head_dim 8). config.json has "
                "**no `num_ln_in_parallel_attn` key** (transformers turns the null into 2) and keeps "
                "`multi_query: true`, which the new architecture ignores.",
                config=dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=6, num_kv_heads=2,
                            new_decoder_architecture=True, multi_query=True, parallel_attn=True, bias=True,
                            ffn_hidden_size=96, tie_word_embeddings=False),
                patch=drop_keys("num_ln_in_parallel_attn"),
            ),
            "sequential_mha": dict(
                doc="The third rotary form transformers supports: `multi_query: false` (one KV head per query head; "
                "`query_key_value` interleaved per head as [q k v] x 4) and `parallel_attn: false` (attention, "
                "residual, then `post_attention_layernorm` -> MLP, residual). 2 layers, hidden 32, 4 heads, "
                "`ffn_hidden_size: 64`, tied head. config.json uses the legacy top-level `rope_theta: 500.0` "
                "instead of `rope_parameters`.",
                config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, multi_query=False,
                            parallel_attn=False, new_decoder_architecture=False, bias=False, ffn_hidden_size=64,
                            rope_parameters={"rope_type": "default", "rope_theta": 500.0}),
                patch=chain(legacy_rope_theta, drop_keys("num_kv_heads")),
            ),
        },
    ),
    "mamba2": dict(
        title="Mamba2 reference fixtures (`Mamba2ForCausalLM`)",
        config_cls=Mamba2Config,
        model_cls=Mamba2ForCausalLM,
        final_norm="backbone.norm_f",
        variants={
            "groups_chunked": dict(
                doc="Pure Mamba2, 3 layers, hidden 32, expand 2, **num_heads 8 x head_dim 8 over n_groups 2** (two "
                "B/C groups, and two groups of 32 channels in the gated RMSNorm), state_size 16, conv_kernel 4, "
                "**chunk_size 5** (T = 21: four full chunks and a ragged one), untied `lm_head` (the Mamba2Config "
                "default), conv bias, no projection biases. config.json as transformers 5 writes it "
                "(`time_step_limit: [0.0, {\"__float__\": \"Infinity\"}]`).",
                config=dict(num_hidden_layers=3, num_heads=8, head_dim=8, n_groups=2, state_size=16, conv_kernel=4,
                            chunk_size=5),
            ),
            "tied_bias": dict(
                doc="Pure Mamba2, 2 layers, hidden 32, num_heads 8 x head_dim 8, **n_groups 4**, state_size 8, "
                "**conv_kernel 3**, chunk_size 8, `use_bias: true` (in_proj / out_proj biases), "
                "`use_conv_bias: false`, **tied** head, `layer_norm_epsilon: 1e-6`. config.json has no "
                "`time_step_limit` key (default (0, inf)).",
                config=dict(num_hidden_layers=2, num_heads=8, head_dim=8, n_groups=4, state_size=8, conv_kernel=3,
                            chunk_size=8, use_bias=True, use_conv_bias=False, tie_word_embeddings=True,
                            layer_norm_epsilon=1e-6),
                patch=drop_keys("time_step_limit"),
            ),
        },
    ),
}

COMMON = {"gpt2": GPT2_COMMON, "falcon": FALCON_COMMON, "mamba2": MAMBA2_COMMON}

# --------------------------------------------------------------------------------------------------
# Weight init
# --------------------------------------------------------------------------------------------------


def randomize(model, gen, arch):
    """Re-draw every parameter (including the ones transformers sets to constants) so that mistakes show and greedy
    output is varied: projections std proj_gain/sqrt(fan_in), MLPs mlp_gain/sqrt(fan_in), tied embeddings
    tied_embed_std (INIT), random norms (weights U(0.5, 1.5), biases N(0, 0.1)), Mamba A/D/dt/conv as in the Granite
    fixtures."""
    cfg = model.config
    tied = cfg.tie_word_embeddings
    init = INIT[arch]

    def normal(shape, std, mean=0.0):
        return torch.randn(shape, generator=gen, dtype=torch.float32) * std + mean

    def uniform(shape, lo, hi):
        return torch.rand(shape, generator=gen, dtype=torch.float32) * (hi - lo) + lo

    done = set()
    with torch.no_grad():
        for mod_name, mod in model.named_modules():
            pre = f"{mod_name}." if mod_name else ""
            if isinstance(mod, (torch.nn.LayerNorm,)):
                mod.weight.copy_(uniform(mod.weight.shape, 0.5, 1.5))
                mod.bias.copy_(normal(mod.bias.shape, 0.1))
                done |= {pre + "weight", pre + "bias"}
            elif isinstance(mod, (Conv1D, torch.nn.Linear)) and not mod_name.endswith("lm_head"):
                fan_in = mod.weight.shape[0] if isinstance(mod, Conv1D) else mod.weight.shape[1]
                mlp = ".mlp." in pre
                mod.weight.copy_(normal(mod.weight.shape, (init["mlp_gain"] if mlp else init["proj_gain"]) / math.sqrt(fan_in)))
                done.add(pre + "weight")
                if mod.bias is not None:
                    mod.bias.copy_(normal(mod.bias.shape, 0.1))
                    done.add(pre + "bias")
        for name, p in model.named_parameters(remove_duplicate=True):
            if name in done:
                continue
            shape = p.shape
            if name in ("transformer.wte.weight", "transformer.word_embeddings.weight", "backbone.embeddings.weight"):
                v = normal(shape, init["tied_embed_std"] if tied else UNTIED_EMBED_STD)
            elif name == "transformer.wpe.weight":
                v = normal(shape, init["tied_embed_std"])  # as large as the token table, not more
            elif name == "lm_head.weight":
                v = normal(shape, 1.0 / math.sqrt(shape[1]))
            elif name.endswith("norm.weight") or name.endswith("norm_f.weight"):
                v = uniform(shape, 0.5, 1.5)
            elif name.endswith("mixer.A_log"):
                v = uniform(shape, -1.0, 2.0)
            elif name.endswith("mixer.dt_bias"):
                v = uniform(shape, -3.5, 0.5)
            elif name.endswith("mixer.D"):
                v = normal(shape, 0.5, 1.0)
            elif name.endswith("conv1d.weight"):
                v = normal(shape, 1.0 / math.sqrt(shape[-1]))
            elif name.endswith("conv1d.bias"):
                v = normal(shape, 0.2)
            else:
                raise RuntimeError(f"{arch}: no init rule for {name} {tuple(shape)}")
            p.copy_(v.to(p.dtype))


def calibrate(model, input_ids, final_norm):
    """Scale the final norm's weight so the logits have std ~LOGIT_STD. A LayerNorm bias is left alone: scaled up
    with the weight, `bias . wte[v]` becomes a fixed per-token offset that makes every greedy step pick the same
    token. (Logits are then only affine in the weight, hence two rounds.)"""
    norm = model.get_submodule(final_norm)
    with torch.no_grad():
        for _ in range(2):
            std = model(input_ids=input_ids, use_cache=False).logits.float().std().item()
            norm.weight.mul_(LOGIT_STD / std)


# --------------------------------------------------------------------------------------------------
# Reference computation
# --------------------------------------------------------------------------------------------------


def write_model_dir(model, out_dir, spec):
    model.save_pretrained(out_dir)
    p = os.path.join(out_dir, "generation_config.json")
    if os.path.exists(p):
        os.remove(p)
    cfg_path = os.path.join(out_dir, "config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    if spec.get("patch"):
        cfg = spec["patch"](cfg)
        with open(cfg_path, "w") as f:
            json.dump(cfg, f, indent=2, sort_keys=True)
            f.write("\n")
    if spec.get("files"):
        spec["files"](out_dir, cfg)


def build_variant(arch, name, spec, seed, out_root):
    a = ARCHS[arch]
    base_cfg = dict(COMMON[arch])
    base_cfg.update(spec["config"])
    for attempt in range(MAX_ATTEMPTS):
        s = seed * 1000 + attempt
        gen = torch.Generator().manual_seed(s)
        cfg = a["config_cls"](**base_cfg)
        cfg._attn_implementation = "eager"
        torch.manual_seed(s)
        model = a["model_cls"](cfg).eval()
        randomize(model, gen, arch)
        input_ids = torch.randint(0, cfg.vocab_size, (B, T), generator=gen, dtype=torch.int64)
        calibrate(model, input_ids, a["final_norm"])

        tmp = tempfile.mkdtemp(prefix=f"fixture_{arch}_{name}_")
        write_model_dir(model, tmp, spec)

        # everything below uses the model as reloaded from disk
        ref = a["model_cls"].from_pretrained(tmp, dtype=torch.float32, attn_implementation="eager").eval()
        with torch.no_grad():
            logits = ref(input_ids=input_ids, use_cache=False).logits.float()
            same = model(input_ids=input_ids, use_cache=False).logits.float()
        reload_diff = (logits - same).abs().max().item()
        assert reload_diff == 0.0, f"{arch}/{name}: reloaded model differs from the built one by {reload_diff}"

        info = dict(seed=s, max_abs_logit=logits.abs().max().item(), logit_std=logits.std().item(),
                    attn_implementation=getattr(ref.config, "_attn_implementation", None))
        greedy, gaps, cache_vs_full, tokens_disagree = [], [], 0.0, 0
        ok = True
        for b in range(B):
            row = input_ids[b]
            toks_nc, lg_nc = mf.greedy_nocache(ref, row, N)
            toks, lg = mf.greedy_generate(ref, row, N)
            gaps += [mf.top2_gap(lg_nc), mf.top2_gap(lg)]
            if torch.equal(toks, toks_nc):
                cache_vs_full = max(cache_vs_full, (lg - lg_nc).abs().max().item())
            else:
                tokens_disagree += 1
            if len(set(toks.tolist())) < MIN_DISTINCT:
                ok = False  # degenerate (repeating) continuation
            greedy.append(toks)
        info.update(min_gap=min(gaps), cache_vs_full=cache_vs_full, tokens_disagree=tokens_disagree)
        if info["min_gap"] < MIN_GAP or tokens_disagree:
            ok = False
        if not ok:
            print(f"  {arch}/{name}: attempt {attempt} rejected ({info})", file=sys.stderr)
            shutil.rmtree(tmp)
            continue

        greedy_ids = torch.stack(greedy).to(torch.int64)
        info["extra"] = variant_checks(arch, name, ref, input_ids)
        out_dir = os.path.join(out_root, arch, name)
        if os.path.exists(out_dir):
            shutil.rmtree(out_dir)
        os.makedirs(os.path.dirname(out_dir), exist_ok=True)
        shutil.move(tmp, out_dir)
        mf.save_deterministic(
            {
                "input_ids": input_ids.contiguous(),
                "logits": logits.contiguous(),
                "greedy_ids": greedy_ids.contiguous(),
            },
            os.path.join(out_dir, "reference.safetensors"),
            metadata={
                "transformers": transformers.__version__,
                "torch": torch.__version__,
                "variant": f"{arch}/{name}",
                "seed": str(s),
                "greedy": "generate(use_cache=True)",
            },
        )
        info["files"] = sorted(os.listdir(out_dir))
        info["bytes"] = sum(os.path.getsize(os.path.join(out_dir, f)) for f in info["files"])
        info["greedy_ids"] = greedy_ids.tolist()
        return info
    raise RuntimeError(f"{arch}/{name}: no acceptable seed in {MAX_ATTEMPTS} attempts")


@torch.no_grad()
def variant_checks(arch, name, model, input_ids):
    """Variant-specific facts the README states; asserted here so they stay true."""
    extra = {}
    c = model.config
    if arch == "falcon":
        attn = model.transformer.h[0].self_attention
        extra["num_kv_heads_used"] = attn.num_kv_heads if not c.new_decoder_architecture else c.num_kv_heads
        extra["num_ln_in_parallel_attn"] = c.num_ln_in_parallel_attn
        extra["rope_theta"] = c.rope_parameters["rope_theta"]
        if name == "falcon7b_multi_query":
            assert attn.num_kv_heads == 1 and c.num_kv_heads == 4
            assert c.ffn_hidden_size == 4 * c.hidden_size
        if name == "new_decoder_architecture":
            assert c.num_ln_in_parallel_attn == 2 and hasattr(model.transformer.h[0], "ln_attn")
        if name == "sequential_mha":
            assert c.rope_parameters["rope_theta"] == 500.0
            assert hasattr(model.transformer.h[0], "post_attention_layernorm")
    if arch == "gpt2" and name == "openai_layout":
        assert c.activation_function == "gelu_new" and c.tie_word_embeddings and c.scale_attn_weights
        extra["scaling_per_layer"] = [blk.attn.scaling for blk in model.transformer.h]
    if arch == "mamba2":
        extra["time_step_limit"] = list(c.time_step_limit)
        extra["gated_norm_group_size"] = model.backbone.layers[0].mixer.norm.group_size
    return extra


# --------------------------------------------------------------------------------------------------
# README
# --------------------------------------------------------------------------------------------------


def write_readme(arch, out_root, infos, seed):
    a = ARCHS[arch]
    L = []
    L.append(f"# {a['title']}\n")
    L.append(
        f"Tiny random-weight `{arch}` checkpoints plus transformers reference outputs, for testing the Rust "
        "implementation against HF to ~1e-4 in f32 (`tests/model_fixtures.rs` runs all four validate modes on each). "
        "Generated by `scripts/make_fixtures_gpt2_falcon_mamba2.py` (run by hand, never in CI).\n"
    )
    L.append("## How they were made\n")
    L.append("```")
    L.append(f"python3 scripts/make_fixtures_gpt2_falcon_mamba2.py --seed {seed}")
    L.append("```")
    L.append(
        f"with Python {sys.version.split()[0]}, torch {torch.__version__} (CPU), transformers "
        f"{transformers.__version__}, safetensors {__import__('safetensors').__version__}, numpy {np.__version__}"
        + (". `mamba_ssm` and `causal_conv1d` were not installed, so transformers ran its pure-torch Mamba-2 paths "
           "(chunked SSD scan for multi-token calls, single-step update for decode)" if arch == "mamba2" else "")
        + ".\n"
    )
    init = INIT[arch]
    L.append(
        "Weights: every parameter is re-drawn, including the ones transformers initialises to constants. "
        f"{'Mixer' if arch == 'mamba2' else 'Attention'} projections std {init['proj_gain']:g}/sqrt(fan_in)"
        + (f", MLP projections {init['mlp_gain']:g}/sqrt(fan_in)" if arch != "mamba2" else "")
        + (" (fan_in is the first dimension of a `Conv1D` weight)" if arch == "gpt2" else "")
        + ", biases N(0, 0.1), "
        + ("RMSNorm weights U(0.5, 1.5)" if arch == "mamba2" else "LayerNorm weights U(0.5, 1.5) and biases N(0, 0.1)")
        + f", token embeddings std {init['tied_embed_std']:g} when tied and {UNTIED_EMBED_STD:g} when untied"
        + (f", position embeddings std {init['tied_embed_std']:g}" if arch == "gpt2" else "")
        + ", untied lm_head 1/sqrt(H)"
        + ("; A_log U(-1, 2), dt_bias U(-3.5, 0.5), D N(1, 0.5), conv weight N(0, 1/K), conv bias N(0, 0.2)"
           if arch == "mamba2" else "")
        + "."
        + (" (The Granite recipe, a tiny tied embedding and 0.5/sqrt(fan_in) projections, makes these LayerNorm "
           "stacks repeat one token: the first residual update swamps the embedding and near-uniform attention "
           "averages the rest away; a larger tied embedding and sharper attention fix it.)" if arch != "mamba2" else "")
        + " The final norm's weight (not its bias) is then scaled so the logits have std ~2. A seed is accepted "
        f"only if, at every greedy step of every row, the top-1 logit beats the top-2 by at least {MIN_GAP:g} in both "
        "the cached (`generate`) and the no-cache run, both runs give the same tokens, and each row's continuation "
        f"has at least {MIN_DISTINCT} distinct tokens.\n"
    )
    L.append("## reference.safetensors\n")
    L.append(
        f"- `input_ids` I64 [{B}, {T}]: random token ids, rows independent, no padding.\n"
        f"- `logits` F32 [{B}, {T}, V]: transformers logits of **one full forward** of the whole `input_ids` batch "
        "without cache (`use_cache=False`), model loaded from this directory with `dtype=float32`, eval mode.\n"
        f"- `greedy_ids` I64 [{B}, {N}]: greedy continuation of {N} new tokens after each row's full `input_ids`, "
        "each row run alone (batch size 1, no padding), no EOS stop, produced by "
        "`model.generate(do_sample=False, use_cache=True, eos_token_id=None)` (prefill, then single-token decode "
        "through transformers' cache"
        + ("; for Mamba2 transformers' cache works, unlike for a mamba-only Granite stack" if arch == "mamba2" else "")
        + "). An explicit no-cache argmax loop (full forward per step) was also run and gave identical tokens.\n"
        "- Metadata (`__metadata__`): transformers/torch versions, variant, seed, how greedy was produced.\n"
    )
    L.append(
        "All references are computed from the model **reloaded from the fixture directory** "
        "(`from_pretrained(dir, dtype=torch.float32)`), after any config.json or tensor-name patching, and the script "
        "asserts that the reloaded model gives bit-identical logits to the model it built. Each directory holds only "
        "`config.json`, `model.safetensors` and `reference.safetensors`.\n"
    )
    L.append("## Variants\n")
    L.append("| variant | seed | max abs logit | min top-2 gap (greedy) | max cached-decode vs full-forward diff | bytes |")
    L.append("|---|---|---|---|---|---|")
    for name, info in infos.items():
        L.append(
            f"| `{name}` | {info['seed']} | {info['max_abs_logit']:.3f} | {info['min_gap']:.2e} | "
            f"{info['cache_vs_full']:.1e} | {info['bytes']} |"
        )
    L.append("")
    for name in infos:
        L.append(f"**`{name}`.** {a['variants'][name]['doc']}\n")
    if arch == "gpt2":
        L.append("## transformers behaviour worth knowing\n")
        L.append(
            "- Positions are `past_seen_tokens + arange(L)`, looked up in `wpe` (learned, absolute), so a chunk or a "
            "decode step uses the rows of its absolute positions; beyond `n_positions` the lookup fails.\n"
            "- `Conv1D.weight` is `[in, out]` (the transpose of `nn.Linear`); `c_attn` outputs are `[q | k | v]`, "
            "each `n_embd` wide with heads contiguous.\n"
            "- `gelu_new` is the tanh approximation `0.5x(1 + tanh(sqrt(2/pi)(x + 0.044715x^3)))`.\n"
            "- `scale_attn_by_inverse_layer_idx` divides the scores of block i by i + 1 (0-based i) on top of "
            "`1/sqrt(head_dim)`; `reorder_and_upcast_attn` only changes precision, not the math.\n"
        )
    if arch == "falcon":
        L.append("## transformers behaviour worth knowing\n")
        L.append(
            "- `query_key_value` is split by `_split_heads` as `view(..., num_kv, heads/num_kv + 2, head_dim)`: per KV "
            "group, its query heads, then its key, then its value. The same rule covers all three forms: multi-query "
            "(`[q x heads | k | v]`, KV count forced to 1 whatever `num_kv_heads` says), plain MHA (per head "
            "`[q k v]`) and the new architecture's groups.\n"
            "- Rotary is Llama's half-split (`rotate_half`) RoPE with `rope_parameters.rope_theta` (legacy top-level "
            "`rope_theta` is read too, default 10000); scores are scaled by `1/sqrt(head_dim)`.\n"
            "- `activation: \"gelu\"` is the exact erf GELU (`nn.GELU()`), not GPT-2's tanh approximation.\n"
            "- With `new_decoder_architecture`, `num_ln_in_parallel_attn: null` becomes 2 (`ln_attn`, `ln_mlp`) when "
            "the decoder layer is built; `multi_query` and `parallel_attn` are documented as ignored, but "
            "`parallel_attn: false` there crashes transformers (missing `ln_attn`), as does "
            "`num_ln_in_parallel_attn: 2` without the new architecture (missing `input_layernorm`), and "
            "`num_kv_heads != num_attention_heads` with neither `multi_query` nor the new architecture (a reshape "
            "error). The Rust loader rejects these with a config error.\n"
            "- The parallel block adds `mlp + attention` first and then the residual.\n"
            "- ALiBi (`alibi: true`) variants are out of scope and rejected by the loader.\n"
        )
    if arch == "mamba2":
        L.append("## transformers behaviour worth knowing\n")
        L.append(
            "- The mixer is the same as Granite 4.0-H's (`shared/reference/granite-4.0-h.md` §4.3), with Mamba2Config "
            "names: `num_heads`, `head_dim`, `n_groups`, `state_size`, `conv_kernel`, `expand`, `use_conv_bias`, "
            "`use_bias`, `layer_norm_epsilon` (also the gated norm's eps). Block: `x + mixer(RMSNorm(x))`; then "
            "`norm_f` and `lm_head` (untied by default).\n"
            "- The gated RMSNorm normalises `y * silu(z)` in **n_groups** contiguous groups of `expand*hidden/n_groups` "
            "channels (`MambaRMSNormGated(group_size=intermediate_size // n_groups)`).\n"
            "- dt: `softplus(dt + dt_bias)` is clamped to `time_step_limit` only in the chunked (multi-token) scan; "
            "the single-token decode update does not clamp. With the default (0, inf) both are no-ops (these "
            "fixtures); the Granite `time_step_limit` fixture covers a biting limit.\n"
            "- `residual_in_fp32` only matters below f32.\n"
            "- `Mamba2Model.load_hook` (rename the older `backbone.embedding.weight` to `embeddings`) is dead code in "
            "5.23: `from_pretrained` reports `backbone.embedding.weight` UNEXPECTED and `embeddings.weight` MISSING "
            "and leaves the embedding randomly initialised. So no transformers reference exists for that spelling; the "
            "Rust loader accepts it anyway (tested by renaming the tensor in a copy of `tied_bias`).\n"
        )
    with open(os.path.join(out_root, arch, "README.md"), "w") as f:
        f.write("\n".join(L))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--out", default=os.path.join(repo, "tests", "fixtures"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", nargs="+", default=None, help="ARCH or ARCH/VARIANT")
    args = ap.parse_args()

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    idx = 0
    for arch, a in ARCHS.items():
        infos = {}
        for name, spec in a["variants"].items():
            idx += 1
            if args.only and arch not in args.only and f"{arch}/{name}" not in args.only:
                continue
            info = build_variant(arch, name, spec, args.seed * 100 + idx, args.out)
            infos[name] = info
            print(
                f"{arch}/{name:24s} seed={info['seed']:6d} max|logit|={info['max_abs_logit']:.3f} "
                f"std={info['logit_std']:.2f} min_gap={info['min_gap']:.2e} cache_vs_full={info['cache_vs_full']:.1e} "
                f"bytes={info['bytes']} attn={info['attn_implementation']}"
            )
            if info["extra"]:
                print(f"{'':30s} {info['extra']}")
            print(f"{'':30s} greedy={info['greedy_ids']}")
        if args.only is None:
            write_readme(arch, args.out, infos, args.seed)
            print(f"wrote {os.path.join(args.out, arch, 'README.md')}")
    if args.only is not None:
        print("(--only given: READMEs not rewritten)")


if __name__ == "__main__":
    main()
