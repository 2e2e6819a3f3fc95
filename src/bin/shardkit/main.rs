//! The `shardkit` command line: parses flags, runs the library, prints results.
//!
//! Results go to stdout (a table, or one JSON document with `--json`); progress bars and the
//! human summary go to stderr, and only when stderr is a terminal; diagnostics go through
//! `tracing` when `SHARDKIT_LOG` is set. Failures print `shardkit: ` and the whole cause
//! chain and exit 1; clap exits 2 on misuse.

mod args;
mod commands;
mod progress;
mod run;

use std::process::ExitCode;

use clap::Parser;
use shardkit::alloc::CountingAlloc;

/// Counts every heap allocation so that `run` can report the largest one and the peak heap.
#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc::new();

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    init_tracing();
    match commands::run(cli.command) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("shardkit: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("SHARDKIT_LOG") else {
        return;
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
