//! `bff-session-conformance`: drive a BFF over HTTP against core's predictions, or check an audit trail.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bff_session_conformance::run::{Harness, Options, load_replay};
use bff_session_conformance::{Mapping, provider};
use bff_session_core::Policy;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "bff-session-conformance", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a dev OpenID provider and drive the target with generated sequences, comparing with core.
    Run(RunArgs),
    /// Replay an audit trail (JSON lines) through core; report the first illegal transition.
    CheckTrace {
        file: PathBuf,
        /// The policy, when the trail has no start line: helix, default or asvs-l2.
        #[arg(long)]
        policy: Option<String>,
    },
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// The target's origin, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    target: String,
    /// The policy preset the target runs: helix, default or asvs-l2.
    #[arg(long)]
    policy: String,
    /// Generated sequences to run.
    #[arg(long, default_value_t = 200)]
    sequences: u32,
    /// Longest sequence, in steps.
    #[arg(long, default_value_t = 24)]
    max_steps: usize,
    /// Seed of the generator: the same seed generates the same sequences.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// A TOML file mapping the target's paths, cookie names and CSRF header (see the README).
    #[arg(long)]
    mapping: Option<PathBuf>,
    /// Where the harness's provider listens; the target must use it as its issuer.
    #[arg(long, default_value = "127.0.0.1:9400")]
    provider_listen: std::net::SocketAddr,
    /// Access-token lifetime at the harness's provider, in seconds.
    #[arg(long, default_value_t = 600)]
    token_ttl: u64,
    /// A shell command that starts the target once the provider is up. It gets BFF_CONFORMANCE_ISSUER,
    /// BFF_CONFORMANCE_CLIENT_ID, BFF_CONFORMANCE_CLIENT_SECRET and BFF_CONFORMANCE_UPSTREAM, and is
    /// stopped at the end.
    #[arg(long)]
    launch: Option<String>,
    /// Run exactly the steps of a reproducer file instead of generating sequences.
    #[arg(long)]
    replay: Option<PathBuf>,
    /// After the run, check the target's audit trail in this file too.
    #[arg(long)]
    trace: Option<PathBuf>,
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::CheckTrace { file, policy } => check_trace(&file, policy.as_deref()),
        Command::Run(args) => run(args),
    }
}

fn check_trace(file: &std::path::Path, policy: Option<&str>) -> ExitCode {
    let policy = match policy.map(|p| Policy::preset(p).ok_or(p)) {
        Some(Err(name)) => {
            eprintln!("unknown policy {name:?}; use one of {}", Policy::PRESETS.join(", "));
            return ExitCode::from(2);
        }
        Some(Ok(p)) => Some(p),
        None => None,
    };
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("cannot read {}: {e}", file.display());
            return ExitCode::from(2);
        }
    };
    match bff_session_core::trace::check(&text, policy) {
        Ok(Ok(summary)) => {
            println!("conforms: {} events of {} sessions", summary.events, summary.sessions);
            ExitCode::SUCCESS
        }
        Ok(Err(violation)) => {
            println!("{violation}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
    }
}

fn run(args: RunArgs) -> ExitCode {
    let Some(mut options) = Options::new(&args.target, &args.policy) else {
        eprintln!("unknown policy {:?}; use one of {}", args.policy, Policy::PRESETS.join(", "));
        return ExitCode::from(2);
    };
    if let Some(path) = &args.mapping {
        match Mapping::load(path) {
            Ok(m) => options.mapping = m,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(2);
            }
        }
    }
    options.sequences = args.sequences;
    options.max_steps = args.max_steps;
    options.seed = args.seed;
    options.provider_listen = args.provider_listen;
    options.token_ttl = Duration::from_secs(args.token_ttl.max(60));
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let harness = match rt.block_on(Harness::start(options.clone())) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    println!("provider: {} (client {} / {})", harness.provider.issuer, provider::CLIENT_ID, provider::CLIENT_SECRET);
    let _child = match &args.launch {
        Some(cmd) => match launch(cmd, &harness.provider.issuer) {
            Ok(child) => Some(child),
            Err(e) => {
                eprintln!("cannot launch the target: {e}");
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    if !rt.block_on(harness.wait_for_target(Duration::from_secs(120))) {
        eprintln!("the target at {} does not answer", options.target);
        return ExitCode::from(2);
    }
    let report = match &args.replay {
        Some(path) => match load_replay(path) {
            Ok(steps) => harness.replay(&rt, steps),
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(2);
            }
        },
        None => harness.run(&rt),
    };
    print!("{}", report.render(&options));
    println!("executions {} (shrinking included), steps {}", report.executions, report.steps);
    let mut code = if report.failure.is_some() { ExitCode::FAILURE } else { ExitCode::SUCCESS };
    if let Some(trace) = &args.trace {
        // The target writes its trail as it goes; every step has been answered by now.
        let checked = check_trace(trace, Some(&args.policy));
        if checked != ExitCode::SUCCESS {
            code = ExitCode::FAILURE;
        }
    }
    code
}

/// The launched target; stopped when the run ends, however it ends.
struct Launched(std::process::Child);

impl Drop for Launched {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn launch(cmd: &str, issuer: &str) -> std::io::Result<Launched> {
    std::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .env("BFF_CONFORMANCE_ISSUER", issuer)
        .env("BFF_CONFORMANCE_CLIENT_ID", provider::CLIENT_ID)
        .env("BFF_CONFORMANCE_CLIENT_SECRET", provider::CLIENT_SECRET)
        .env("BFF_CONFORMANCE_UPSTREAM", issuer)
        .spawn()
        .map(Launched)
}
