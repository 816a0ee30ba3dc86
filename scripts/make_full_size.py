#!/usr/bin/env python3
"""Full-size random-weight Granite 4.0-H checkpoints (`GraniteMoeHybridForCausalLM`) for load / speed / memory tests.

Run by hand, never in CI. Last run with:
    python 3.11.7, torch 2.15.0 (CPU), transformers 5.23.0, tokenizers 0.23.3, safetensors 0.8.0

    python3 scripts/make_full_size.py --model granite-4.0-h-350m|granite-4.0-h-1b [--out DIR] [--seed S]
                                      [--no-verify]

Default DIR is models/<model> under the repository root (git-ignored). Writes:
    config.json               released-style config (spec /work/shared/reference/granite-4.0-h.md §2.1/§2.2):
                              `layer_types` with the legacy names mamba/attention, top-level rope_theta,
                              `torch_dtype: bfloat16`, no time_step_limit, tied embeddings, NoPE
    model.safetensors         bf16 weights, on-disk (legacy) tensor names of spec §3; sharded at 2 GB with
    (or model-0000i-of-0000n.safetensors + model.safetensors.index.json)
    tokenizer.json            byte-level BPE (GPT-2 style bytes, cl100k-like split regex as Granite's "dbrx"
                              pre-tokenizer) trained on English text found on this machine, padded with added
                              special tokens to exactly 100352 ids (see SPECIAL_TOKENS)
    tokenizer_config.json     bos = eos = <|end_of_text|>, pad <|pad|>, add_bos_token false, Granite-style
    special_tokens_map.json   chat_template (spec §2.4; NOT the verbatim released template)
    generation_config.json

The weights are random, drawn so that greedy output is varied (quirks doc): projections std 0.5/sqrt(fan_in),
MLPs 1/sqrt(fan_in), small embeddings (std 0.002; with a tied head and embedding_multiplier 12 larger ones make
the model repeat the current token), random norm / A_log / dt_bias / D / conv parameters, and the final norm
weight scaled so that the logits of a random prompt have std ~2. Tensors are generated directly by name and shape
(never a full f32 model); names and shapes are checked against transformers' own module tree on the meta device,
and the result is loaded with `from_pretrained` and asked to generate a few tokens (unless --no-verify).

Cost on a 2-core / 24 GiB machine: h-350m 340,332,224 parameters, ~30 s, 2.7 GB peak RSS; h-1b 1,461,538,368
parameters, ~2 min, 9.7 GB peak RSS (the calibration forward runs in f32 on the bf16-rounded weights). The
tokenizer training (~100k merges on ~126M characters) takes 15-30 s and is deterministic (both runs produced
byte-identical tokenizer.json files).
"""

import argparse
import gzip
import hashlib
import json
import math
import os
import re
import sys
import time

import torch
from safetensors.torch import save_file

import transformers
from transformers import GraniteMoeHybridConfig, GraniteMoeHybridForCausalLM

VOCAB = 100352
BOS = EOS = 100257
PAD = 100256

# Spec §2.1 (shared by the H models) and §2.2 (per model).
SHARED = dict(
    vocab_size=VOCAB,
    tie_word_embeddings=True,
    embedding_multiplier=12.0,
    rms_norm_eps=1e-05,
    position_embedding_type="nope",
    rope_theta=10000,
    hidden_act="silu",
    attention_bias=False,
    attention_dropout=0.0,
    mamba_expand=2,
    mamba_n_groups=1,
    mamba_d_state=128,
    mamba_d_conv=4,
    mamba_chunk_size=256,
    mamba_conv_bias=True,
    mamba_proj_bias=False,
    bos_token_id=BOS,
    eos_token_id=EOS,
    pad_token_id=PAD,
)

MODELS = {
    "granite-4.0-h-350m": dict(
        hidden_size=768,
        num_hidden_layers=32,
        attention_layers=[10, 13, 17, 27],
        num_attention_heads=12,
        num_key_value_heads=4,
        attention_multiplier=0.015625,
        residual_multiplier=0.246,
        logits_scaling=3.0,
        mamba_n_heads=48,
        mamba_d_head=32,
        num_local_experts=0,
        num_experts_per_tok=0,
        intermediate_size=2048,
        shared_intermediate_size=2048,
        max_position_embeddings=32768,
    ),
    "granite-4.0-h-1b": dict(
        hidden_size=1536,
        num_hidden_layers=40,
        attention_layers=[5, 15, 25, 35],
        num_attention_heads=12,
        num_key_value_heads=4,
        attention_multiplier=0.0078125,
        residual_multiplier=0.22,
        logits_scaling=6.0,
        mamba_n_heads=48,
        mamba_d_head=64,
        num_local_experts=0,
        num_experts_per_tok=0,
        intermediate_size=4096,
        shared_intermediate_size=4096,
        max_position_embeddings=131072,
    ),
}

SHARD_BYTES = 2 * 1000**3  # "2GB" as transformers counts it
EMBED_STD = 0.002
PROJ_GAIN = 0.5
MLP_GAIN = 1.0
LOGIT_STD = 2.0

# --------------------------------------------------------------------------------------------------
# config.json
# --------------------------------------------------------------------------------------------------


def released_config(name):
    m = dict(MODELS[name])
    attn = set(m.pop("attention_layers"))
    cfg = dict(SHARED)
    cfg.update(m)
    cfg["layer_types"] = ["attention" if i in attn else "mamba" for i in range(cfg["num_hidden_layers"])]
    cfg.update(
        architectures=["GraniteMoeHybridForCausalLM"],
        model_type="granitemoehybrid",
        init_method="mup",
        initializer_range=0.1,
        normalization_function="rmsnorm",
        output_router_logits=False,
        router_aux_loss_coef=0.01,
        rope_scaling=None,
        torch_dtype="bfloat16",
        transformers_version=transformers.__version__,
        use_cache=True,
    )
    return dict(sorted(cfg.items()))


# --------------------------------------------------------------------------------------------------
# weights
# --------------------------------------------------------------------------------------------------


def expected_tensors(cfg):
    """On-disk name -> shape, from transformers' own module tree (meta device, no memory)."""
    with torch.device("meta"):
        model = GraniteMoeHybridForCausalLM(cfg)
    shapes = {}
    for n, p in model.state_dict().items():
        if n == "lm_head.weight" and cfg.tie_word_embeddings:
            continue  # omitted on disk when tied, as transformers 5 and the released checkpoints do
        n = (
            n.replace("block_sparse_moe.experts.gate_up_proj", "block_sparse_moe.input_linear.weight")
            .replace("block_sparse_moe.experts.down_proj", "block_sparse_moe.output_linear.weight")
            .replace("block_sparse_moe.router.weight", "block_sparse_moe.router.layer.weight")
        )
        shapes[n] = tuple(p.shape)
    return shapes


def spec_tensors(cfg):
    """The same list written down from spec §3, as an independent check."""
    H, V = cfg.hidden_size, cfg.vocab_size
    nh, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
    hd = H // nh
    d_in = cfg.mamba_expand * H
    conv_dim = d_in + 2 * cfg.mamba_n_groups * cfg.mamba_d_state
    nH, S = cfg.mamba_n_heads, cfg.shared_intermediate_size
    t = {"model.embed_tokens.weight": (V, H), "model.norm.weight": (H,)}
    for i, kind in enumerate(cfg.layer_types):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = (H,)
        t[p + "post_attention_layernorm.weight"] = (H,)
        if kind == "full_attention":
            t[p + "self_attn.q_proj.weight"] = (nh * hd, H)
            t[p + "self_attn.k_proj.weight"] = (nkv * hd, H)
            t[p + "self_attn.v_proj.weight"] = (nkv * hd, H)
            t[p + "self_attn.o_proj.weight"] = (H, nh * hd)
        else:
            t[p + "mamba.in_proj.weight"] = (d_in + conv_dim + nH, H)
            t[p + "mamba.conv1d.weight"] = (conv_dim, 1, cfg.mamba_d_conv)
            t[p + "mamba.conv1d.bias"] = (conv_dim,)
            t[p + "mamba.dt_bias"] = (nH,)
            t[p + "mamba.A_log"] = (nH,)
            t[p + "mamba.D"] = (nH,)
            t[p + "mamba.norm.weight"] = (d_in,)
            t[p + "mamba.out_proj.weight"] = (H, d_in)
        assert cfg.num_local_experts == 0
        t[p + "shared_mlp.input_linear.weight"] = (2 * S, H)
        t[p + "shared_mlp.output_linear.weight"] = (H, S)
    return t


def draw(name, shape, gen):
    def normal(std, mean=0.0):
        return torch.randn(shape, generator=gen, dtype=torch.float32).mul_(std).add_(mean)

    def uniform(lo, hi):
        return torch.rand(shape, generator=gen, dtype=torch.float32).mul_(hi - lo).add_(lo)

    if name == "model.embed_tokens.weight":
        v = normal(EMBED_STD)
    elif name.endswith("norm.weight") or name.endswith("layernorm.weight"):
        v = uniform(0.5, 1.5)
    elif name.endswith("mamba.A_log"):
        v = uniform(-1.0, 2.0)
    elif name.endswith("mamba.dt_bias"):
        v = uniform(-3.5, 0.5)
    elif name.endswith("mamba.D"):
        v = normal(0.5, 1.0)
    elif name.endswith("conv1d.weight"):
        v = normal(1.0 / math.sqrt(shape[-1]))
    elif name.endswith("conv1d.bias"):
        v = normal(0.2)
    elif "shared_mlp" in name or "block_sparse_moe" in name:
        v = normal(MLP_GAIN / math.sqrt(shape[-1]))
    elif len(shape) == 2:
        v = normal(PROJ_GAIN / math.sqrt(shape[-1]))
    else:
        raise RuntimeError(f"no init rule for {name} {shape}")
    return v.to(torch.bfloat16)


def layer_order(name):
    m = re.match(r"model\.layers\.(\d+)\.(.*)", name)
    if m:
        return (1, int(m.group(1)), m.group(2))
    return (0 if "embed" in name else 2, 0, name)


@torch.no_grad()
def calibrate_and_probe(cfg, tensors, seed):
    """Put the weights (bf16-rounded, upcast to f32 as an f32 engine would run them) into a meta-built model,
    scale the final norm so logits std ~ LOGIT_STD, then greedy-decode a random prompt to check that the output
    is varied and the top-2 gaps are not tiny."""
    with torch.device("meta"):
        model = GraniteMoeHybridForCausalLM(cfg)
    sd = {k: v.float() for k, v in tensors.items()}
    if cfg.tie_word_embeddings:
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
    missing, unexpected = model.load_state_dict(sd, strict=False, assign=True)
    assert not unexpected and not missing, (missing, unexpected)
    model.tie_weights()
    model.eval()
    for n, p in list(model.named_parameters()) + list(model.named_buffers()):
        assert p.device.type != "meta", n
    gen = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(0, 100000, (2, 32), generator=gen)
    std = model(input_ids=ids, use_cache=False).logits.float().std().item()
    scale = LOGIT_STD / std
    tensors["model.norm.weight"] = (tensors["model.norm.weight"].float() * scale).to(torch.bfloat16)
    model.model.norm.weight.data = tensors["model.norm.weight"].float()
    logits = model(input_ids=ids, use_cache=False).logits.float()
    print(f"  logits std before calibration {std:.4f}, scale {scale:.1f}, after {logits.std().item():.3f}, "
          f"max |logit| {logits.abs().max().item():.2f}")
    out = model.generate(
        input_ids=ids[:1, :16], attention_mask=torch.ones_like(ids[:1, :16]), max_new_tokens=16, do_sample=False,
        eos_token_id=None, pad_token_id=PAD, output_logits=True, return_dict_in_generate=True,
    )
    toks = out.sequences[0, 16:].tolist()
    lg = torch.stack(out.logits)[:, 0].float()
    top2 = lg.topk(2, dim=-1).values
    gap = (top2[:, 0] - top2[:, 1]).min().item()
    print(f"  greedy probe (f32, cached): {toks}  distinct {len(set(toks))}/16, min top-2 gap {gap:.3g}")
    return model


def write_weights(out, tensors):
    names = sorted(tensors, key=layer_order)
    shards, cur, cur_bytes = [], {}, 0
    for n in names:
        nb = tensors[n].numel() * tensors[n].element_size()
        if cur and cur_bytes + nb > SHARD_BYTES:
            shards.append(cur)
            cur, cur_bytes = {}, 0
        cur[n] = tensors[n].contiguous()
        cur_bytes += nb
    shards.append(cur)
    for f in os.listdir(out):
        if re.fullmatch(r"model(-\d{5}-of-\d{5})?\.safetensors(\.index\.json)?", f):
            os.remove(os.path.join(out, f))
    if len(shards) == 1:
        save_file(shards[0], os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
        return ["model.safetensors"]
    weight_map, files = {}, []
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    for i, sh in enumerate(shards):
        fn = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(sh, os.path.join(out, fn), metadata={"format": "pt"})
        files.append(fn)
        for n in sh:
            weight_map[n] = fn
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f, indent=2)
        f.write("\n")
    return files + ["model.safetensors.index.json"]


# --------------------------------------------------------------------------------------------------
# tokenizer
# --------------------------------------------------------------------------------------------------

# Ids from spec §2.4. <|tool_call|> and the FIM / repo tokens exist in the real vocabulary but their ids are
# UNCONFIRMED; the ids below are made up. Every other id from 100256 up is a reserved filler.
SPECIAL_TOKENS = {
    100256: "<|pad|>",
    100257: "<|end_of_text|>",
    100258: "<|fim_prefix|>",
    100259: "<|fim_middle|>",
    100260: "<|fim_suffix|>",
    100261: "<|fim_pad|>",
    100262: "<|filename|>",
    100263: "<|reponame|>",
    100264: "<|start_of_role|>",
    100265: "<|end_of_role|>",
    100266: "<|tool_call|>",
    100269: "<|unk|>",
}
FIRST_ADDED = 100256

# cl100k-like split (llama.cpp calls Granite's pre-tokenizer "dbrx", which uses this regex)
SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)

CORPUS_ROOTS = ["/usr/share/doc", "/usr/share/vim/vim90/doc", "/usr/share/perl/5.36.0/pod", "/usr/share/info"]
TEXT_EXT = (".txt", ".md", ".rst", ".pod", ".info")
TEXT_NAMES = ("copyright", "changelog", "changelog.debian", "todo", "authors", "thanks", "faq", "history", "changes")


def corpus():
    """English text available offline: /usr/share/doc (READMEs, changelogs, copyright files, .gz decompressed),
    vim and perl docs, info pages, and the Python standard library sources (docstrings and comments).
    Deterministic order, duplicates dropped, each file capped at 1M characters."""
    import sysconfig

    stdlib = sysconfig.get_paths()["stdlib"]

    def wanted(path):
        b = os.path.basename(path)
        if b.endswith(".gz"):
            b = b[:-3]
        b = re.sub(r"-\d+$", "", b).lower()
        return b.endswith(TEXT_EXT) or b in TEXT_NAMES or b.startswith(("readme", "news"))

    paths = []
    for root in CORPUS_ROOTS + [stdlib]:
        for dp, dn, fn in os.walk(root):
            for skip in ("site-packages", "dist-packages"):
                if skip in dn:
                    dn.remove(skip)
            dn.sort()
            for f in sorted(fn):
                p = os.path.join(dp, f)
                if os.path.islink(p):
                    continue
                if (root == stdlib and f.endswith(".py")) or (root != stdlib and wanted(p)):
                    paths.append(p)
    seen, texts = set(), []
    for p in paths:
        try:
            raw = gzip.open(p).read() if p.endswith(".gz") else open(p, "rb").read()
        except (OSError, EOFError):
            continue
        if not raw or b"\0" in raw[:4096]:
            continue
        s = raw.decode("utf-8", errors="ignore")[:1_000_000]
        h = hashlib.sha1(s.encode()).digest()
        if h in seen:
            continue
        seen.add(h)
        texts.append(s)
    return texts


def build_tokenizer():
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    texts = corpus()
    print(f"  tokenizer corpus: {len(texts)} files, {sum(map(len, texts)) / 1e6:.0f}M characters")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=FIRST_ADDED,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    t0 = time.time()
    tok.train_from_iterator(texts, trainer=trainer)
    n = tok.get_vocab_size()
    print(f"  BPE trained in {time.time() - t0:.0f}s: {n} tokens (256 bytes + {n - 256} merges)")
    added = []
    for i in range(n, VOCAB):  # fillers, then the specials at their fixed ids, then fillers up to VOCAB - 1
        name = SPECIAL_TOKENS.get(i, f"<|reserved_{i}|>")
        tok.add_special_tokens([AddedToken(name, special=True, normalized=False)])
        assert tok.token_to_id(name) == i, (name, tok.token_to_id(name), i)
        added.append((i, name))
    assert tok.get_vocab_size() == VOCAB
    for i, name in SPECIAL_TOKENS.items():
        assert tok.token_to_id(name) == i
    return tok, added


CHAT_TEMPLATE = r"""{%- set tools_prefix = 'You are a helpful assistant with access to the following tools. You may call one or more tools to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>' -%}
{%- set tools_suffix = '\n</tools>\n\nFor each tool call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>. If a tool does not exist in the provided list of tools, notify the user that you do not have the ability to fulfill the request.' -%}
{%- set documents_prefix = 'You are a helpful assistant with access to the following documents. You may use one or more documents to assist with the user query.\n\nYou are given a list of documents within <documents></documents> XML tags:\n<documents>' -%}
{%- set documents_suffix = '\n</documents>\n\nWrite the response to the user\'s input by strictly aligning with the facts in the provided documents. If the information needed to answer the question is not available in the documents, inform the user that the question cannot be answered based on the available data.' -%}
{%- if messages and messages[0]['role'] == 'system' -%}
    {%- set ns = namespace(system=messages[0]['content']) -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set ns = namespace(system='') -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- if tools -%}
    {%- set ns.system = ns.system + ('\n\n' if ns.system else '') + tools_prefix -%}
    {%- for tool in tools -%}
        {%- set ns.system = ns.system + '\n' + (tool | tojson) -%}
    {%- endfor -%}
    {%- set ns.system = ns.system + tools_suffix -%}
{%- endif -%}
{%- if documents -%}
    {%- set ns.system = ns.system + ('\n\n' if ns.system else '') + documents_prefix -%}
    {%- for document in documents -%}
        {%- set ns.system = ns.system + '\n' + (document | tojson) -%}
    {%- endfor -%}
    {%- set ns.system = ns.system + documents_suffix -%}
{%- endif -%}
{%- if ns.system -%}
    {{- '<|start_of_role|>system<|end_of_role|>' + ns.system + '<|end_of_text|>\n' -}}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- set content = message['content'] if message['content'] is string else '' -%}
    {%- if message['role'] == 'tool' -%}
        {{- '<|start_of_role|>user<|end_of_role|><tool_response>\n' + content + '\n</tool_response><|end_of_text|>\n' -}}
    {%- elif message['role'] == 'assistant' and message.get('tool_calls') -%}
        {{- '<|start_of_role|>assistant<|end_of_role|>' + content -}}
        {%- for tc in message['tool_calls'] -%}
            {%- set call = tc['function'] if tc.get('function') else tc -%}
            {{- '<tool_call>\n{"name": "' + call['name'] + '", "arguments": ' + (call['arguments'] if call['arguments'] is string else (call['arguments'] | tojson)) + '}\n</tool_call>' -}}
        {%- endfor -%}
        {{- '<|end_of_text|>\n' -}}
    {%- else -%}
        {{- '<|start_of_role|>' + message['role'] + '<|end_of_role|>' + content + '<|end_of_text|>\n' -}}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '<|start_of_role|>assistant<|end_of_role|>' -}}
{%- endif -%}"""


def write_tokenizer(out, max_len):
    tok, added = build_tokenizer()
    tok.save(os.path.join(out, "tokenizer.json"))
    added_decoder = {
        str(i): dict(content=name, lstrip=False, normalized=False, rstrip=False, single_word=False, special=True)
        for i, name in added
    }
    tcfg = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": added_decoder,
        "bos_token": "<|end_of_text|>",
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|end_of_text|>",
        "errors": "replace",
        "model_max_length": max_len,
        "pad_token": "<|pad|>",
        "padding_side": "left",
        "tokenizer_class": "GPT2Tokenizer",
        "unk_token": "<|unk|>",
    }
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump(tcfg, f, indent=2, ensure_ascii=False)
        f.write("\n")
    stm = {k: tcfg[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token")}
    with open(os.path.join(out, "special_tokens_map.json"), "w") as f:
        json.dump(stm, f, indent=2)
        f.write("\n")
    gcfg = {"bos_token_id": BOS, "eos_token_id": EOS, "pad_token_id": PAD,
            "transformers_version": transformers.__version__}
    with open(os.path.join(out, "generation_config.json"), "w") as f:
        json.dump(gcfg, f, indent=2)
        f.write("\n")


# --------------------------------------------------------------------------------------------------
# verification with transformers
# --------------------------------------------------------------------------------------------------


@torch.no_grad()
def verify(out, n_params):
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tk = AutoTokenizer.from_pretrained(out)
    raw = Tokenizer.from_file(os.path.join(out, "tokenizer.json"))
    assert len(tk) == VOCAB, len(tk)
    assert (tk.bos_token_id, tk.eos_token_id, tk.pad_token_id, tk.unk_token_id) == (BOS, EOS, PAD, 100269)
    for i, name in SPECIAL_TOKENS.items():
        assert tk.convert_tokens_to_ids(name) == i
    sample = "Hello world 1234567 I'M here\n\n  def f(x): return x**2  "
    assert tk(sample)["input_ids"] == raw.encode(sample).ids, "transformers does not use tokenizer.json as is"
    assert tk.decode(tk(sample)["input_ids"]) == sample
    msgs = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is a mamba layer?"}]
    prompt = tk.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    ids = tk.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    assert ids[0, 0].item() == 100264 and ids[0, -1].item() == 100265, ids
    print(f"  chat prompt: {prompt!r}")
    print(f"  prompt ids ({ids.shape[1]}): {ids[0].tolist()}")

    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16)
    assert type(model).__name__ == "GraniteMoeHybridForCausalLM"
    assert [("attention" if t == "full_attention" else "mamba") for t in model.config.layer_types] == \
        json.load(open(os.path.join(out, "config.json")))["layer_types"]
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr(), "head not tied"
    n = sum(p.numel() for p in model.parameters())
    assert n == n_params, (n, n_params)
    t0 = time.time()
    gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False)
    new = gen[0, ids.shape[1]:].tolist()
    print(f"  transformers from_pretrained + generate (bf16, {time.time() - t0:.1f}s): {new} -> "
          f"{tk.decode(new)!r}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, choices=list(MODELS))
    ap.add_argument("--out", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-verify", action="store_true")
    args = ap.parse_args()
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = args.out or os.path.join(repo, "models", args.model)
    os.makedirs(out, exist_ok=True)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

    print(f"{args.model} -> {out}")
    cfg_json = released_config(args.model)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg_json, f, indent=2)
        f.write("\n")
    cfg = GraniteMoeHybridConfig.from_pretrained(out)  # parsed exactly as a loader would
    assert cfg.mamba_d_head * cfg.mamba_n_heads == cfg.mamba_expand * cfg.hidden_size

    shapes = expected_tensors(cfg)
    assert shapes == spec_tensors(cfg), "transformers' tensor list differs from spec §3"
    gen = torch.Generator().manual_seed(args.seed)
    tensors = {}
    for n in sorted(shapes, key=layer_order):
        tensors[n] = draw(n, shapes[n], gen)
    n_params = sum(t.numel() for t in tensors.values())
    print(f"  {len(tensors)} tensors, {n_params:,} parameters, {2 * n_params / 1e9:.2f} GB in bf16")

    model = calibrate_and_probe(cfg, tensors, args.seed)
    del model
    files = write_weights(out, tensors)
    print(f"  weights: {files}")
    write_tokenizer(out, cfg.max_position_embeddings)
    del tensors

    if not args.no_verify:
        verify(out, n_params)
    print(f"{args.model}: {n_params:,} parameters ({n_params / 1e6:.1f}M) written to {out}")


if __name__ == "__main__":
    main()
