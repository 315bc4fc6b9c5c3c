//! `ferry-gateway --config FILE`: serves workspace ports to browsers (see the library docs).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use ferry_gateway::{Config, Gateway};
use tokio::signal::unix::{SignalKind, signal};

/// Serves workspace ports to browsers under a wildcard app domain.
#[derive(Parser)]
#[command(name = "ferry-gateway", version)]
struct Args {
    /// The gateway's TOML configuration file.
    #[arg(long)]
    config: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("ferry-gateway: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    let config = Config::load(&args.config).map_err(|e| e.to_string())?;
    let listen = config.listen;
    let gateway = Gateway::new(config).map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
        let mut terminate = signal(SignalKind::terminate())
            .map_err(|e| format!("cannot watch for SIGTERM: {e}"))?;
        eprintln!("ferry-gateway: listening on {listen}");
        tokio::select! {
            () = gateway.serve(listener) => Ok(()),
            _ = tokio::signal::ctrl_c() => Ok(()),
            _ = terminate.recv() => Ok(()),
        }
    })
}
