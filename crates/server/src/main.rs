//! `bff-session serve|demo|admin|completions|man`.

use clap::Parser as _;

use bff_session_server::config::{Cli, Command};
use bff_session_server::telemetry::Telemetry;

// glibc's allocator costs about a fifth of the session check's throughput under load (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command.write_docs(&mut std::io::stdout()) {
        Ok(true) => return std::process::ExitCode::SUCCESS,
        Ok(false) => {}
        Err(e) => {
            eprintln!("bff-session: {e}");
            return std::process::ExitCode::FAILURE;
        }
    }
    // An admin command's answer goes to standard output, so its logs go to standard error, quiet unless asked.
    let admin = matches!(cli.command, Command::Admin(_));
    let telemetry = match Telemetry::install(
        if admin { "warn" } else { "info" },
        cli.log_json,
        admin,
        cli.otlp_endpoint.as_ref(),
    ) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("bff-session: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let code = run(cli.command).await;
    telemetry.shutdown();
    code
}

async fn run(command: Command) -> std::process::ExitCode {
    if let Command::Admin(args) = command {
        return match bff_session_server::admin::run(args, &mut std::io::stdout().lock()).await {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bff-session admin: {e}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let settings = match command.settings() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("bff-session: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let demo = settings.demo;
    match bff_session_server::start_with_shutdown(settings, shutdown_signal()).await {
        Ok(running) => {
            if demo {
                println!("bff-session demo: open {}/ in a browser", running.public_url);
            }
            running.wait().await;
            tracing::info!("stopped");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bff-session: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
