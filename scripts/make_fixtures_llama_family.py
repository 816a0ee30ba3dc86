#!/usr/bin/env python3
"""Reference fixtures for the Llama family: `LlamaForCausalLM`, `GraniteForCausalLM`, `GraniteMoeForCausalLM`
and `Gemma3ForCausalLM` (text).

Run by hand, never in CI. Pinned to, and last run with:
    python 3.11.7, torch 2.15.0 (CPU), transformers 5.23.0, safetensors 0.8.0, numpy 2.4.6

    python3 scripts/make_fixtures_llama_family.py [--out-root DIR] [--seed S] [--only ARCH/VARIANT ...]

Writes, for every variant, DIR/<arch>/<variant>/ in the same format as scripts/make_fixtures.py (Granite 4.0-H):
    config.json                        (save_pretrained, then patched for legacy spellings where noted)
    model.safetensors
    reference.safetensors              input_ids  I64 [B, T]
                                       logits     F32 [B, T, V]   one full forward, use_cache=False, f32, eval
                                       greedy_ids I64 [B, N]      generate(do_sample=False, use_cache=True), per row
and DIR/<arch>/README.md (only on a full run, i.e. without --only).

Every reference is computed from the model *reloaded from the written directory* with
`from_pretrained(dir, dtype=float32, attn_implementation="eager")`.
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

import transformers
from transformers import (
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GraniteConfig,
    GraniteForCausalLM,
    GraniteMoeConfig,
    GraniteMoeForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures as mf  # noqa: E402  (shared: B, T, N, gap/greedy helpers, write_model_dir)

PINNED = "5.23.0"
B, T, N = mf.B, mf.T, mf.N
MIN_GAP = mf.MIN_GAP
LOGIT_STD = mf.LOGIT_STD
MIN_DISTINCT = mf.MIN_DISTINCT
MAX_ATTEMPTS = 40
EMBED_STD_TIED = 0.002
EMBED_STD_UNTIED = 0.05
BIAS_STD = 0.02  # constant offsets; larger ones make every position predict the same token

S, F = "sliding_attention", "full_attention"

LLAMA_COMMON = dict(
    vocab_size=256,
    hidden_size=32,
    intermediate_size=64,
    rms_norm_eps=1e-5,
    max_position_embeddings=256,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)

# --------------------------------------------------------------------------------------------------
# config.json patches (applied after save_pretrained)
# --------------------------------------------------------------------------------------------------


def _legacy_llama_rope(cfg):
    """Released Llama 3.1 spelling: top-level `rope_theta` plus `rope_scaling` (no `rope_parameters`)."""
    rp = cfg.pop("rope_parameters")
    cfg["rope_theta"] = rp.pop("rope_theta")
    cfg["rope_scaling"] = rp
    return cfg


def _legacy_gemma3(pattern):
    """Hub spelling of Gemma 3 configs: no `layer_types` (so `sliding_window_pattern` decides), top-level
    `rope_theta` / `rope_local_base_freq`, and the global layers' scaling as `rope_scaling`."""

    def patch(cfg):
        cfg.pop("layer_types")
        cfg.pop("_sliding_window_pattern", None)
        cfg["sliding_window_pattern"] = pattern
        rp = cfg.pop("rope_parameters")
        full, local = dict(rp["full_attention"]), dict(rp["sliding_attention"])
        cfg["rope_theta"] = full.pop("rope_theta")
        cfg["rope_local_base_freq"] = local.pop("rope_theta")
        assert local.get("rope_type", "default") == "default", local
        cfg["rope_scaling"] = full if full.get("rope_type", "default") != "default" else None
        return cfg

    return patch


# --------------------------------------------------------------------------------------------------
# Variants
# --------------------------------------------------------------------------------------------------

ARCHS = {
    "llama": dict(
        title="Llama (`LlamaForCausalLM`)",
        model_cls=LlamaForCausalLM,
        config_cls=LlamaConfig,
        common=LLAMA_COMMON,
    ),
    "granite": dict(
        title="Granite 3 dense and MoE (`GraniteForCausalLM`, `GraniteMoeForCausalLM`)",
        model_cls=None,  # per variant
        config_cls=None,
        common=LLAMA_COMMON,
    ),
    "gemma3": dict(
        title="Gemma 3 text (`Gemma3ForCausalLM`)",
        model_cls=Gemma3ForCausalLM,
        config_cls=Gemma3TextConfig,
        common=dict(
            vocab_size=256,
            hidden_size=32,
            intermediate_size=64,
            rms_norm_eps=1e-6,
            max_position_embeddings=256,
            bos_token_id=2,
            eos_token_id=1,
            pad_token_id=0,
            hidden_activation="gelu_pytorch_tanh",
        ),
    ),
}

VARIANTS = {
    ("llama", "gqa_untied"): dict(
        doc="GQA 4:1 (4 query heads, 1 KV head) with a **`head_dim` override** (16, so q is 64 wide on a 32-wide "
        "residual), untied `lm_head.weight`, 3 layers, unscaled RoPE with theta 10000 under `rope_parameters` as "
        "transformers 5 writes it.",
        config=dict(
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=16,
            tie_word_embeddings=False,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        ),
    ),
    ("llama", "tied_llama3"): dict(
        doc="Tied head, GQA 2:1 (head_dim 16), **llama3 RoPE scaling** (factor 8, low/high_freq_factor 1/4, "
        "`original_max_position_embeddings` 32, theta 10000) so all three bands occur: pair 0 is kept (wavelength "
        "6.3 < 32/4), pair 1 is smoothed (wavelength 19.9 between 8 and 32) and pairs 2-7 are divided by 8; "
        "`attention_bias` and `mlp_bias` on. config.json patched to the released Llama 3.1 spelling: top-level "
        "`rope_theta` + `rope_scaling` object instead of `rope_parameters`.",
        config=dict(
            num_hidden_layers=3,
            num_attention_heads=2,
            num_key_value_heads=1,
            tie_word_embeddings=True,
            attention_bias=True,
            mlp_bias=True,
            rope_parameters={
                "rope_type": "llama3",
                "rope_theta": 10000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 32,
            },
        ),
        patch=_legacy_llama_rope,
    ),
    ("granite", "dense_multipliers"): dict(
        doc="`GraniteForCausalLM` (Granite 3 dense) with every multiplier non-trivial: embedding_multiplier 12, "
        "residual_multiplier 0.22, attention_multiplier 0.0625 (not 1/sqrt(head_dim) = 0.354), logits_scaling 6 "
        "(not a power of two, so a reciprocal multiply would differ from HF's division in the last bit); tied head "
        "(Granite 3 ties), GQA 4:1 (head_dim 8), 3 layers, rope_theta 1e5.",
        model_cls=GraniteForCausalLM,
        config_cls=GraniteConfig,
        config=dict(
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=1,
            tie_word_embeddings=True,
            embedding_multiplier=12.0,
            residual_multiplier=0.22,
            attention_multiplier=0.0625,
            logits_scaling=6.0,
            rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
        ),
    ),
    ("granite", "moe"): dict(
        doc="`GraniteMoeForCausalLM` (Granite 3 MoE): 5 experts top-2 (intermediate 32), router top-k on the raw "
        "logits then softmax over the k; multipliers 3.5 / 0.5 / 0.3 (attention) / 2.5, untied head, GQA 4:2, "
        "3 layers. Expert tensors on disk under the legacy names (`block_sparse_moe.input_linear.weight`, "
        "`output_linear.weight`, `router.layer.weight`).",
        model_cls=GraniteMoeForCausalLM,
        config_cls=GraniteMoeConfig,
        config=dict(
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=32,
            num_local_experts=5,
            num_experts_per_tok=2,
            tie_word_embeddings=False,
            embedding_multiplier=3.5,
            residual_multiplier=0.5,
            attention_multiplier=0.3,
            logits_scaling=2.5,
        ),
    ),
    ("gemma3", "sliding_mixed"): dict(
        doc="4 layers `[sliding, sliding, full, sliding]` with **sliding_window 5** (< T = 21, so most queries lose "
        "keys), local RoPE base 1e4 vs global 1e6 (nested `rope_parameters.{sliding_attention,full_attention}` as "
        "transformers 5 writes them), **query_pre_attn_scalar 24** (head_dim 16, so the scale is 24^-0.5, not "
        "16^-0.5), GQA 4:2, no soft-capping, tied head. The saved config also carries transformers' "
        "`_sliding_window_pattern: 6`, which disagrees with `layer_types` (that would make all 4 layers sliding); "
        "transformers follows `layer_types`.",
        config=dict(
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            query_pre_attn_scalar=24,
            sliding_window=5,
            layer_types=[S, S, F, S],
            rope_parameters={
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                "full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
            },
        ),
    ),
    ("gemma3", "softcap_legacy"): dict(
        doc="**final_logit_softcapping 6.0** (bites; measured effect below) and **attn_logit_softcapping 1.0**, "
        "which transformers 5.23 *ignores* for Gemma 3: `Gemma3Attention` stores `attn_logit_softcapping` but never "
        "passes `softcap=` to the attention function (Gemma 2 does), so the reference scores are not capped and an "
        "engine must not cap them either to match (the script asserts that dropping the setting changes nothing). "
        "4 layers, sliding_window 7, query_pre_attn_scalar 12 (head_dim 8, 4 query heads, 1 KV head). "
        "config.json patched to the Hub spelling of Gemma 3 configs: no `layer_types` but "
        "`sliding_window_pattern: 2` (layers sliding, full, sliding, full), top-level `rope_theta` 5e5 and "
        "`rope_local_base_freq` 2e4, and `rope_scaling: {rope_type: linear, factor: 4}` which transformers applies "
        "to the global layers only.",
        config=dict(
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=8,
            query_pre_attn_scalar=12,
            sliding_window=7,
            layer_types=[S, F, S, F],
            attn_logit_softcapping=1.0,
            final_logit_softcapping=6.0,
            rope_parameters={
                "sliding_attention": {"rope_type": "default", "rope_theta": 20000.0},
                "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 500000.0},
            },
        ),
        patch=_legacy_gemma3(pattern=2),
    ),
}


def variant_classes(arch, spec):
    a = ARCHS[arch]
    return spec.get("model_cls", a["model_cls"]), spec.get("config_cls", a["config_cls"])


# --------------------------------------------------------------------------------------------------
# Weight init
# --------------------------------------------------------------------------------------------------


def is_gemma(model):
    return isinstance(model, Gemma3ForCausalLM)


def randomize(model, gen):
    """Re-draw every parameter so that mistakes show and greedy output is varied (rules as in make_fixtures.py):
    attention projections std 0.5/sqrt(fan_in), MLP/expert weights 1/sqrt(fan_in), router 1.5/sqrt(H), small
    embeddings when tied, random norm weights (Gemma's are stored centred on 0: its RMSNorm scales by 1 + w)."""
    cfg = model.config
    gemma = is_gemma(model)

    def normal(shape, std, mean=0.0):
        return torch.randn(shape, generator=gen, dtype=torch.float32) * std + mean

    def uniform(shape, lo, hi):
        return torch.rand(shape, generator=gen, dtype=torch.float32) * (hi - lo) + lo

    with torch.no_grad():
        for name, p in model.named_parameters(remove_duplicate=True):
            shape = p.shape
            if name == "model.embed_tokens.weight":
                v = normal(shape, EMBED_STD_TIED if cfg.tie_word_embeddings else EMBED_STD_UNTIED)
            elif name == "lm_head.weight":
                v = normal(shape, 1.0 / math.sqrt(shape[1]))
            elif name.endswith("norm.weight"):
                v = uniform(shape, -0.5, 0.5) if gemma else uniform(shape, 0.5, 1.5)
            elif name.endswith("router.weight"):
                v = normal(shape, 1.5 / math.sqrt(shape[-1]))
            elif name.endswith(".bias"):
                v = normal(shape, BIAS_STD)
            elif ".mlp." in name or ".experts." in name:
                v = normal(shape, 1.0 / math.sqrt(shape[-1]))
            elif p.dim() == 2:
                v = normal(shape, 0.5 / math.sqrt(shape[-1]))
            else:
                raise RuntimeError(f"no init rule for {name} {tuple(shape)}")
            p.copy_(v.to(p.dtype))


@torch.no_grad()
def calibrate(model, input_ids):
    """Scale the final norm so the logits have std LOGIT_STD. Gemma's norm scales by (1 + w), so rescale that sum;
    with final soft-capping the map is not linear, hence a few rounds."""
    w = model.model.norm.weight
    for _ in range(4):
        std = model(input_ids=input_ids, use_cache=False).logits.float().std().item()
        s = LOGIT_STD / std
        if is_gemma(model):
            w.copy_((1.0 + w) * s - 1.0)
        else:
            w.mul_(s)
        if abs(s - 1.0) < 1e-3:
            break


# --------------------------------------------------------------------------------------------------
# Reference computation
# --------------------------------------------------------------------------------------------------


def load_ref(model_cls, path, **overrides):
    return model_cls.from_pretrained(path, dtype=torch.float32, attn_implementation="eager", **overrides).eval()


def build_variant(arch, name, spec, seed, out_root):
    model_cls, config_cls = variant_classes(arch, spec)
    base_cfg = dict(ARCHS[arch]["common"])
    base_cfg.update(spec["config"])
    for attempt in range(MAX_ATTEMPTS):
        s = seed * 1000 + attempt
        gen = torch.Generator().manual_seed(s)
        torch.manual_seed(s)
        cfg = config_cls(**base_cfg)
        cfg._attn_implementation = "eager"
        model = model_cls(cfg).eval()
        randomize(model, gen)
        input_ids = torch.randint(0, cfg.vocab_size, (B, T), generator=gen, dtype=torch.int64)
        calibrate(model, input_ids)

        tmp = tempfile.mkdtemp(prefix=f"fixture_{arch}_{name}_")
        mf.write_model_dir(model, tmp, spec)

        ref = load_ref(model_cls, tmp)
        assert list(getattr(ref.config, "layer_types", None) or []) == list(getattr(cfg, "layer_types", None) or [])
        assert ref.config.tie_word_embeddings == cfg.tie_word_embeddings
        assert ref.config.rope_parameters == cfg.rope_parameters, (ref.config.rope_parameters, cfg.rope_parameters)
        with torch.no_grad():
            logits = ref(input_ids=input_ids, use_cache=False).logits.float()
            same = model(input_ids=input_ids, use_cache=False).logits.float()
        reload_diff = (logits - same).abs().max().item()
        assert reload_diff == 0.0, f"{arch}/{name}: reloaded model differs from the built one by {reload_diff}"

        info = dict(seed=s, max_abs_logit=logits.abs().max().item(), logit_std=logits.std().item())
        greedy, gaps, cache_vs_full, ok, disagree = [], [], 0.0, True, 0
        for b in range(B):
            row = input_ids[b]
            toks_nc, lg_nc = mf.greedy_nocache(ref, row, N)
            toks, lg = mf.greedy_generate(ref, row, N)
            gaps += [mf.top2_gap(lg_nc), mf.top2_gap(lg)]
            if not torch.equal(toks, toks_nc):
                ok = False
                disagree += 1
            else:
                cache_vs_full = max(cache_vs_full, (lg - lg_nc).abs().max().item())
            greedy.append(toks)
        info.update(min_gap=min(gaps), cache_vs_full=cache_vs_full, tokens_disagree=disagree)
        info["min_distinct"] = min(len(set(g.tolist())) for g in greedy)
        if info["min_distinct"] < MIN_DISTINCT:
            ok = False
        if info["min_gap"] < MIN_GAP:
            ok = False
        if not ok:
            print(f"  {arch}/{name}: attempt {attempt} rejected ({info})", file=sys.stderr)
            shutil.rmtree(tmp)
            continue

        greedy_ids = torch.stack(greedy).to(torch.int64)
        info["extra"] = variant_checks(arch, name, model_cls, tmp, ref, input_ids, logits)
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
def variant_checks(arch, name, model_cls, path, ref, input_ids, logits):
    """Facts worth recording (and asserting): each knob the variant exists for changes the logits."""
    extra = {}

    def effect(**overrides):
        other = load_ref(model_cls, path, **overrides)
        return (other(input_ids=input_ids, use_cache=False).logits.float() - logits).abs().max().item()

    if (arch, name) == ("llama", "tied_llama3"):
        rot = ref.model.rotary_emb
        plain = 1.0 / (10000.0 ** (torch.arange(0, 16, 2, dtype=torch.float) / 16))
        extra["inv_freq"] = [f"{v:.6e}" for v in rot.inv_freq.tolist()]
        extra["inv_freq_unscaled"] = [f"{v:.6e}" for v in plain.tolist()]
        extra["scaling_effect"] = effect(rope_scaling={"rope_type": "default", "rope_theta": 10000.0})
        assert extra["scaling_effect"] > 1e-2
    if arch == "gemma3":
        c = ref.config
        extra["layer_types"] = list(c.layer_types)
        extra["rope_parameters"] = c.rope_parameters
        assert c.rope_parameters["sliding_attention"]["rope_theta"] != c.rope_parameters["full_attention"]["rope_theta"]
        assert c.sliding_window < T and S in c.layer_types and F in c.layer_types
        assert c.query_pre_attn_scalar != c.head_dim
        extra["sliding_window_effect"] = effect(sliding_window=4 * T)
        assert extra["sliding_window_effect"] > 1e-2
        if c.attn_logit_softcapping is not None:
            # transformers 5.23's Gemma3Attention never hands the cap to the attention function: no effect.
            extra["attn_softcap_effect"] = effect(attn_logit_softcapping=None)
            assert extra["attn_softcap_effect"] == 0.0, extra["attn_softcap_effect"]
        if c.final_logit_softcapping is not None:
            extra["final_softcap_effect"] = effect(final_logit_softcapping=None)
            assert extra["final_softcap_effect"] > 1e-2
        with open(os.path.join(path, "config.json")) as f:
            saved = json.load(f)
        extra["saved_pattern_keys"] = {k: saved[k] for k in ("_sliding_window_pattern", "sliding_window_pattern") if k in saved}
    return extra


# --------------------------------------------------------------------------------------------------
# README
# --------------------------------------------------------------------------------------------------


def write_readme(arch, out_root, infos, seed):
    a = ARCHS[arch]
    L = []
    L.append(f"# {a['title']} reference fixtures\n")
    L.append(
        "Tiny random-weight checkpoints plus transformers reference outputs, for testing the Rust implementation "
        "against HF to ~1e-4 in f32. Generated by `scripts/make_fixtures_llama_family.py` (run by hand, never in "
        "CI); same file format as `tests/fixtures/granite_hybrid` (see its README).\n"
    )
    L.append("## How they were made\n")
    L.append("```")
    L.append(f"python3 scripts/make_fixtures_llama_family.py --seed {seed}")
    L.append("```")
    L.append(
        f"with Python {sys.version.split()[0]}, torch {torch.__version__} (CPU), transformers "
        f"{transformers.__version__}, safetensors {__import__('safetensors').__version__}, numpy {np.__version__}; "
        "eager attention.\n"
    )
    L.append(
        "Weights: every parameter re-drawn: attention projections std 0.5/sqrt(fan_in), MLP and expert weights "
        f"1/sqrt(fan_in), router 1.5/sqrt(H), embeddings std {EMBED_STD_TIED:g} when tied and {EMBED_STD_UNTIED:g} "
        f"when untied, untied lm_head 1/sqrt(H), biases N(0, {BIAS_STD:g}), RMSNorm weights U(0.5, 1.5) (Gemma: U(-0.5, 0.5), "
        "its norm scales by 1 + w). The final norm is then rescaled so the logits have std 2. A seed is accepted "
        f"only if, at every greedy step of every row, the top-1 logit beats the top-2 by at least {MIN_GAP:g} in both "
        "the cached `generate` run and a no-cache argmax loop, both give the same tokens, and each row's "
        f"continuation has at least {MIN_DISTINCT} distinct tokens.\n"
    )
    L.append("## reference.safetensors\n")
    L.append(
        f"- `input_ids` I64 [{B}, {T}]: random token ids, rows independent, no padding.\n"
        f"- `logits` F32 [{B}, {T}, V]: one full forward of the whole batch, `use_cache=False`, model reloaded from "
        "this directory with `dtype=float32`, eval mode (after soft-capping / `logits_scaling`).\n"
        f"- `greedy_ids` I64 [{B}, {N}]: `generate(do_sample=False, use_cache=True, eos_token_id=None)` per row "
        "alone (batch 1), no EOS stop.\n"
        "- Metadata: transformers/torch versions, variant, seed.\n"
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
    for name, info in infos.items():
        L.append(f"**`{name}`.** {VARIANTS[(arch, name)]['doc']}\n")
        ex = info["extra"]
        if "inv_freq" in ex:
            L.append(
                f"Measured: transformers' llama3 `inv_freq` = {ex['inv_freq']} (unscaled {ex['inv_freq_unscaled']}); "
                f"replacing the scaling by default RoPE changes the logits by up to {ex['scaling_effect']:.3f}.\n"
            )
        if "sliding_window_effect" in ex:
            parts = [f"layer_types as loaded = {ex['layer_types']}", f"rope_parameters as loaded = `{json.dumps(ex['rope_parameters'])}`",
                     f"a window of {4 * T} instead changes the logits by up to {ex['sliding_window_effect']:.3f}"]
            if "attn_softcap_effect" in ex:
                parts.append(f"dropping attn_logit_softcapping changes them by {ex['attn_softcap_effect']:g} (ignored by transformers)")
            if "final_softcap_effect" in ex:
                parts.append(f"dropping final_logit_softcapping by up to {ex['final_softcap_effect']:.3f}")
            if ex["saved_pattern_keys"]:
                parts.append(f"pattern keys in config.json: `{json.dumps(ex['saved_pattern_keys'])}`")
            L.append("Measured: " + "; ".join(parts) + ".\n")
    with open(os.path.join(out_root, arch, "README.md"), "w") as f:
        f.write("\n".join(L))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--out-root", default=os.path.join(repo, "tests", "fixtures"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", nargs="+", choices=[f"{a}/{v}" for a, v in VARIANTS], default=None)
    args = ap.parse_args()
    if transformers.__version__ != PINNED:
        sys.exit(f"transformers {PINNED} required (found {transformers.__version__})")

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    infos = {}
    for i, (arch, name) in enumerate(VARIANTS):
        if args.only is not None and f"{arch}/{name}" not in args.only:
            continue
        info = build_variant(arch, name, VARIANTS[(arch, name)], args.seed * 100 + i + 1, args.out_root)
        infos.setdefault(arch, {})[name] = info
        print(
            f"{arch}/{name:18s} seed={info['seed']:6d} max|logit|={info['max_abs_logit']:.3f} "
            f"std={info['logit_std']:.2f} min_gap={info['min_gap']:.2e} cache_vs_full={info['cache_vs_full']:.1e} "
            f"bytes={info['bytes']}"
        )
        if info["extra"]:
            print(f"{'':20s} {info['extra']}")
        print(f"{'':20s} greedy={info['greedy_ids']}")
    if args.only is None:
        for arch, arch_infos in infos.items():
            write_readme(arch, args.out_root, arch_infos, args.seed)
            print(f"wrote {os.path.join(args.out_root, arch, 'README.md')}")
    else:
        print("(--only given: README.md not rewritten)")


if __name__ == "__main__":
    main()
