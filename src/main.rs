//! The `nanovllm` command line: one subcommand per file under `cli/`.

mod cli;

use clap::Parser;

// Large per-step buffers (logits, activations) are freed and reallocated every step; glibc
// returns them to the kernel and pays page faults plus zeroing each time, mimalloc reuses them.
// The counting wrapper feeds `nanovllm train`'s memory tracker (two relaxed atomics per call).
#[global_allocator]
static GLOBAL: nanovllm::train::memory::CountingAlloc<mimalloc::MiMalloc> =
    nanovllm::train::memory::CountingAlloc(mimalloc::MiMalloc);

fn main() -> std::process::ExitCode {
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
