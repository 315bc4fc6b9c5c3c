//! `ferry-gateway --config FILE`: serves workspace ports to browsers (see the library docs).
//! `ferry-gateway share|unshare ...`: the share API's command-line client, which `ferry share`
//! and `ferry unshare` run.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use ferry_gateway::client::{self, ClientError, ShareArgs, UnshareArgs};
use ferry_gateway::{Config, Gateway};
use tokio::signal::unix::{SignalKind, signal};

/// Serves workspace ports to browsers under a wildcard app domain.
#[derive(Parser)]
#[command(
    name = "ferry-gateway",
    version,
    args_conflicts_with_subcommands = true
)]
struct Args {
    /// The gateway's TOML configuration file (runs the gateway).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Share a workspace port (`share WORKSPACE PORT --level LEVEL`), or list shares
    /// (`share ls [WORKSPACE]`).
    Share(ShareArgs),
    /// Set a workspace port back to owner only.
    Unshare(UnshareArgs),
}

fn main() -> ExitCode {
    // `ferry share` runs this binary with argv[0] set to how the user called it.
    let name = program_name();
    let matches = Args::command().bin_name(&name).get_matches();
    let args = match Args::from_arg_matches(&matches) {
        Ok(args) => args,
        Err(e) => e.exit(),
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let result = match (args.command, args.config) {
        (Some(Command::Share(a)), _) => client::share(a),
        (Some(Command::Unshare(a)), _) => client::unshare(a),
        (None, Some(config)) => serve(config).map_err(ClientError::Failed),
        (None, None) => Err(ClientError::Usage(
            "pass --config FILE to run the gateway, or a command (share, unshare); see --help"
                .into(),
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(ClientError::Usage(message)) => {
            eprintln!("{name}: {message}");
            ExitCode::from(EXIT_USAGE)
        }
        Err(ClientError::Failed(message)) => {
            eprintln!("{name}: {message}");
            ExitCode::FAILURE
        }
    }
}

fn serve(config: PathBuf) -> Result<(), String> {
    let config = Config::load(&config).map_err(|e| e.to_string())?;
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

// "ferry-gateway", or what `ferry` passed as argv[0] ("ferry", "ferry gateway").
fn program_name() -> String {
    std::env::args_os()
        .next()
        .map(PathBuf::from)
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .filter(|n| n.starts_with("ferry"))
        .unwrap_or_else(|| "ferry-gateway".into())
}

const EXIT_USAGE: u8 = 2;
