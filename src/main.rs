//! The `nanovllm` command line: one subcommand per file under `cli/`.

mod cli;

use clap::Parser;

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
