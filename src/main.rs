//! The `nanovllm` command line: one subcommand per file under `cli/`.

mod cli;

use clap::Parser;

// Large per-step buffers (logits, activations) are freed and reallocated every step; glibc
// returns them to the kernel and pays page faults plus zeroing each time, mimalloc reuses them.
// The counting wrapper feeds `nanovllm train`'s memory tracker (two relaxed atomics per call).
#[global_allocator]
static GLOBAL: nanovllm::train::memory::CountingAlloc<mimalloc::MiMalloc> =
    nanovllm::train::memory::CountingAlloc(mimalloc::MiMalloc);

/// mimalloc's `mi_option_purge_delay` (v2 numbering, libmimalloc-sys's default build).
const MI_OPTION_PURGE_DELAY: i32 = 15;

/// Stops mimalloc from returning freed memory to the kernel 10 ms after a free (its default):
/// a prefill frees and reallocates buffers of tens of MiB per layer, and every return made the
/// next allocation fault in and zero fresh pages (15 % of a 2048-token prefill in `perf`).
/// Peak RSS is unchanged: the memory is reused, not added. `MIMALLOC_PURGE_DELAY` overrides.
fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets a plain integer option before any other thread exists.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
}

fn main() -> std::process::ExitCode {
    keep_freed_memory();
    cli::init_logging();
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
