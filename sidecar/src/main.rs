//! `kura-agent`: see the library docs.
#![forbid(unsafe_code)]

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = kura_agent::cli::Cli::parse();
    kura_agent::cli::init_tracing(cli.log_format);
    // One thread: the agent waits on the network most of the time and its RSS is multiplied by
    // every pod in the cluster.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    match rt {
        Ok(rt) => rt.block_on(kura_agent::cli::run(cli)),
        Err(e) => {
            eprintln!("kura-agent: cannot start the runtime: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
