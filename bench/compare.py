#!/usr/bin/env python3
"""Runs llama.cpp and nanovllm side by side on the same GGUF files and prints one table.
Called by bench/compare.sh, which first builds everything and makes the model files; see
there for the options. Standard library only (plus llama.cpp's gguf-py for tensor sizes).

Per repetition, for every (model, format) in turn, interleaved so machine noise hits both:
    llama-bench -t T -p 512,2048 -n 128 -r 1           pp512, pp2048, tg128
    nanovllm bench --mode latency                       same three workloads
    llama-batched-bench -npp 128 -ntg 128 -npl 16       16 sequences decoding together
    nanovllm bench --mode throughput (16 x 128 in, 128 out, all concurrent)
Each cell of the table is the median over the repetitions; peak RSS is the largest VmHWM
(ru_maxrss) of the processes behind the cell.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LLAMA_HOME = Path(os.environ.get("LLAMA_CPP_HOME", Path.home() / ".cache/nanovllm/llama.cpp"))
LLAMA_BIN = LLAMA_HOME / "build/bin"
BATCH = 16  # sequences of the batched-decode workload
BATCH_PROMPT = 128
DECODE = 128
PROMPTS = (512, 2048)
WORKLOADS = [f"pp{p}" for p in PROMPTS] + [f"tg{DECODE}", f"{BATCH}x tg{DECODE}"]


def run(cmd, env=None, log=None):
    """Runs `cmd`, logging its output; returns (exit code, stdout, stderr)."""
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    out, err = proc.communicate()
    rc = proc.returncode
    if log is not None:
        log.write(f"$ {' '.join(map(str, cmd))}  # rc={rc} {time.time() - t0:.1f}s\n{out}\n{err}\n")
        log.flush()
    return rc, out, err


def measured(cmd, env=None, log=None):
    """Runs `cmd` under a wrapper that reports its peak RSS; returns (rc, stdout, rss MiB).
    The wrapper is a fresh process whose only child is `cmd`, so its RUSAGE_CHILDREN maximum
    is exactly that child's (ours would accumulate the largest of all earlier runs)."""
    wrapper = [sys.executable, "-c", (
        "import os, resource, subprocess, sys\n"
        "rc = subprocess.call(sys.argv[1:], stdout=sys.stdout, stderr=sys.stderr)\n"
        "kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
        "sys.stderr.write(f'\\nPEAK_RSS_KIB {kib}\\n')\n"
        "sys.exit(rc)\n")]
    rc, out, err = run(wrapper + [str(c) for c in cmd], env, log)
    rss = None
    for line in err.splitlines():
        if line.startswith("PEAK_RSS_KIB "):
            rss = int(line.split()[1]) / 1024
    return rc, out, rss


def llama_env():
    return {"LD_LIBRARY_PATH": str(LLAMA_BIN)}


def llama_latency(gguf, threads, log):
    cmd = [LLAMA_BIN / "llama-bench", "-m", gguf, "-t", threads, "-p", ",".join(map(str, PROMPTS)),
           "-n", DECODE, "-r", 1, "-o", "json"]
    rc, out, rss = measured(cmd, llama_env(), log)
    if rc != 0:
        return {}, None, {}
    res, info = {}, {}
    for r in json.loads(out):
        key = f"pp{r['n_prompt']}" if r["n_gen"] == 0 else f"tg{r['n_gen']}"
        res[key] = r["avg_ts"]
        info = {"build_commit": r.get("build_commit"), "build_number": r.get("build_number")}
    return res, rss, info


def llama_batched(gguf, threads, log):
    ctx = BATCH * (BATCH_PROMPT + DECODE) + 256
    cmd = [LLAMA_BIN / "llama-batched-bench", "-m", gguf, "-t", threads, "-c", ctx, "-b", 2048,
           "-ub", 512, "-npp", BATCH_PROMPT, "-ntg", DECODE, "-npl", BATCH,
           "--output-format", "jsonl"]
    rc, out, rss = measured(cmd, llama_env(), log)
    if rc != 0:
        return {}, None
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("{") and '"speed_tg"' in line:
            return {f"{BATCH}x tg{DECODE}": json.loads(line)["speed_tg"]}, rss
    return {}, rss


def ours_latency(nanovllm, gguf, threads, log):
    cmd = [nanovllm, "bench", "--model", gguf, "--threads", threads, "--json", "--prompt-lens",
           ",".join(map(str, PROMPTS)), "--decode-tokens", DECODE, "--reps", 1]
    rc, out, rss = measured(cmd, None, log)
    if rc != 0:
        return {}, None
    rep = json.loads(out.strip().splitlines()[-1])
    res = {}
    for row in rep["results"]:
        kind, n = row["workload"].split()
        res[("pp" if kind == "prefill" else "tg") + n] = row["tokens_per_s"]
    return res, rss


def ours_batched(nanovllm, gguf, threads, log):
    cmd = [nanovllm, "bench", "--mode", "throughput", "--model", gguf, "--threads", threads,
           "--json", "--num-requests", BATCH, "--max-num-seqs", BATCH,
           "--input-len", f"{BATCH_PROMPT},{BATCH_PROMPT}", "--output-len", f"{DECODE},{DECODE}",
           "--max-num-batched-tokens", BATCH * BATCH_PROMPT, "--no-prefix-caching"]
    rc, out, rss = measured(cmd, None, log)
    if rc != 0:
        return {}, None
    rep = json.loads(out.strip().splitlines()[-1])
    return {f"{BATCH}x tg{DECODE}": rep["results"]["concurrent"]["decode_tokens_per_s"]}, rss


def weight_bytes(gguf):
    """Bytes of tensor data in a GGUF file (what one decode step has to read, tied head once)."""
    sys.path.insert(0, str(LLAMA_HOME / "src/vendor/llama.cpp/gguf-py"))
    from gguf import GGUFReader  # noqa: E402 (llama.cpp's own reader)

    return sum(int(t.n_bytes) for t in GGUFReader(str(gguf)).tensors)


def state_bytes(model_dir):
    """Recurrent state read + written per sequence per decode step (f32, both engines)."""
    cfg = json.loads((model_dir / "config.json").read_text())
    layers = cfg.get("layer_types") or []
    mamba = sum(1 for t in layers if t in ("mamba", "linear_attention"))
    nh, p, n = cfg["mamba_n_heads"], cfg["mamba_d_head"], cfg["mamba_d_state"]
    conv_dim = nh * p + 2 * cfg["mamba_n_groups"] * n
    per_layer = 4 * (nh * p * n + (cfg["mamba_d_conv"] - 1) * conv_dim)
    return 2 * mamba * per_layer


def machine():
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    mem = next((int(l.split()[1]) // 1024 for l in open("/proc/meminfo") if l.startswith("MemTotal")), 0)
    return f"{cpu}, {os.cpu_count()} cores, {mem / 1024:.0f} GiB RAM, {platform.release()}"


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(v, spec=".1f"):
    return "—" if v is None else format(v, spec)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--nanovllm", required=True)
    ap.add_argument("--membw", required=True)
    ap.add_argument("--models", default="granite-4.0-h-350m")
    ap.add_argument("--formats", default="bf16,q8_0")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-batched", action="store_true", help="skip the 16-sequence workload")
    ap.add_argument("--out", default=None, help="directory for the raw log and results.json")
    a = ap.parse_args()
    models = [m if m.startswith("granite") else f"granite-4.0-h-{m}" for m in a.models.split(",")]
    formats = [f.lower() for f in a.formats.split(",")]
    out = Path(a.out or f"/tmp/nanovllm-compare-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / "log.txt", "w")
    load_before = os.getloadavg()

    rc, bw_out, _ = measured([a.membw, "--threads", a.threads, "--json"], None, log)
    bandwidth = json.loads(bw_out.strip().splitlines()[-1])["read_gb_per_s"] * 1e9 if rc == 0 else None

    cells = {}  # (model, fmt, workload, engine) -> [tok/s]
    rss = {}  # (model, fmt, workload, engine) -> [MiB]
    version = {}

    def add(model, f, engine, res, mib, workloads):
        for w in workloads:
            cells.setdefault((model, f, w, engine), []).append(res.get(w))
            rss.setdefault((model, f, w, engine), []).append(mib)

    lat = [f"pp{p}" for p in PROMPTS] + [f"tg{DECODE}"]
    bat = [f"{BATCH}x tg{DECODE}"]
    for rep in range(a.reps):
        for model in models:
            for f in formats:
                gguf = ROOT / "models" / f"{model}-{f}.gguf"
                t = a.threads
                print(f"[rep {rep + 1}/{a.reps}] {gguf.name}", file=sys.stderr, flush=True)
                res, mib, version = llama_latency(gguf, t, log)
                add(model, f, "llama.cpp", res, mib, lat)
                res, mib = ours_latency(a.nanovllm, gguf, t, log)
                add(model, f, "nanovllm", res, mib, lat)
                if not a.no_batched:
                    res, mib = llama_batched(gguf, t, log)
                    add(model, f, "llama.cpp", res, mib, bat)
                    res, mib = ours_batched(a.nanovllm, gguf, t, log)
                    add(model, f, "nanovllm", res, mib, bat)
    load_after = os.getloadavg()

    workloads = lat + ([] if a.no_batched else bat)
    rows = []
    for model in models:
        sb = state_bytes(ROOT / "models" / model)
        for f in formats:
            wb = weight_bytes(ROOT / "models" / f"{model}-{f}.gguf")
            for w in workloads:
                get = lambda e: median(cells.get((model, f, w, e), []))  # noqa: E731
                peak = lambda e: max((m for m in rss.get((model, f, w, e), []) if m), default=None)  # noqa: E731
                ll, ours = get("llama.cpp"), get("nanovllm")
                row = {"model": model, "format": f, "workload": w, "llama_tok_s": ll, "nanovllm_tok_s": ours,
                       "ratio": ours / ll if ll and ours else None,
                       "llama_rss_mib": peak("llama.cpp"), "nanovllm_rss_mib": peak("nanovllm"),
                       "samples": {e: cells.get((model, f, w, e)) for e in ("llama.cpp", "nanovllm")}}
                if w.startswith("tg") or w.startswith(f"{BATCH}x"):
                    seqs = BATCH if w.startswith(f"{BATCH}x") else 1
                    step_bytes = wb + seqs * sb  # weights once per step, state per sequence
                    if bandwidth:
                        limit = bandwidth / step_bytes * seqs  # tok/s if only reading bytes mattered
                        row["bandwidth_limit_tok_s"] = limit
                        row["llama_bw_frac"] = ll / limit if ll else None
                        row["nanovllm_bw_frac"] = ours / limit if ours else None
                rows.append(row)

    head = {
        "machine": machine(),
        "load_average_before": load_before,
        "load_average_after": load_after,
        "threads": a.threads,
        "reps": a.reps,
        "bandwidth_gb_s": bandwidth / 1e9 if bandwidth else None,
        "llama_cpp": {**version, "source": " ".join(p.name for p in (LLAMA_HOME / "dl").glob("*.tar.gz"))},
        "nanovllm_commit": subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                                          capture_output=True, text=True).stdout.strip(),
    }
    (out / "results.json").write_text(json.dumps({"header": head, "rows": rows}, indent=2))

    print(f"machine: {head['machine']}")
    print(f"load average before {' '.join(f'{x:.2f}' for x in load_before)}, "
          f"after {' '.join(f'{x:.2f}' for x in load_after)}; threads {a.threads}; "
          f"median of {a.reps} interleaved runs")
    print(f"llama.cpp {version.get('build_commit')} from {head['llama_cpp']['source']}; "
          f"nanovllm {head['nanovllm_commit']}; streaming read bandwidth "
          f"{fmt(head['bandwidth_gb_s'], '.1f')} GB/s")
    print()
    print("| model | format | workload | llama.cpp tok/s | nanovllm tok/s | ratio | llama.cpp RSS MiB "
          "| nanovllm RSS MiB | decode % of bandwidth limit (llama.cpp / nanovllm) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        bw = ""
        if "bandwidth_limit_tok_s" in r:
            pct = lambda v: "—" if v is None else f"{100 * v:.0f} %"  # noqa: E731
            bw = f"{pct(r['llama_bw_frac'])} / {pct(r['nanovllm_bw_frac'])} of {r['bandwidth_limit_tok_s']:.0f}"
        print(f"| {r['model'].replace('granite-4.0-', '')} | {r['format']} | {r['workload']} "
              f"| {fmt(r['llama_tok_s'])} | {fmt(r['nanovllm_tok_s'])} | {fmt(r['ratio'], '.2f')}x "
              f"| {fmt(r['llama_rss_mib'], '.0f')} | {fmt(r['nanovllm_rss_mib'], '.0f')} | {bw} |")
    print(f"\nraw samples and log: {out}")


if __name__ == "__main__":
    main()
