//! `bff-session serve|demo|admin|completions|man`.

use clap::Parser as _;
use tracing_subscriber::EnvFilter;

use bff_session_server::config::{Cli, Command};

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
    if let Command::Admin(args) = cli.command {
        // The answer goes to standard output; logs go to standard error, quiet unless asked for.
        let filter = EnvFilter::try_from_env("BFF_SESSION_LOG").unwrap_or_else(|_| EnvFilter::new("warn"));
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
        return match bff_session_server::admin::run(args, &mut std::io::stdout().lock()).await {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bff-session admin: {e}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let filter = EnvFilter::try_from_env("BFF_SESSION_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    if cli.log_json {
        tracing_subscriber::fmt().json().with_env_filter(filter).init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    let settings = match cli.command.settings() {
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
