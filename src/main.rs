//! `kura`: see the library docs.
#![forbid(unsafe_code)]

use clap::Parser;

// The admission path allocates many small, short-lived objects (decoded pods, patch values);
// mimalloc serves them with markedly less CPU than glibc's malloc (see README, Performance).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = kura::cli::Cli::parse();
    let server = matches!(cli.command, kura::cli::Command::Serve(_));
    let _logs = kura::telemetry::init(cli.log_format.as_str(), server);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build();
    match rt {
        Ok(rt) => rt.block_on(kura::cli::run(cli)),
        Err(e) => {
            eprintln!("kura: cannot start the runtime: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
