//! `bff-session-conformance`: drive a BFF over HTTP against core's predictions, or check an audit trail.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use std::sync::Arc;
use std::time::Instant;

use bff_session_conformance::profile::{ClockMode, Profile, TOLERANCE};
use bff_session_conformance::report::{self, Card};
use bff_session_conformance::run::{Harness, Options, load_replay};
use bff_session_conformance::verdict::{self, Effort, Outcome};
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
    /// Give a verdict per invariant for one target and write its report card (JSON).
    Report(ReportArgs),
    /// Start a target from its profile with the harness's provider, sign one device in, print one JSON line
    /// (`origin`, `session_path`, `cookie`, `pid`, the process group to measure), and keep it running until
    /// standard input closes. For load generators: `cargo xtask bench` compares the peers this way.
    Hold {
        /// The target's profile (`crates/conformance/targets/NAME/profile.toml`).
        #[arg(long)]
        profile: PathBuf,
        /// Access-token lifetime at the provider, in seconds: long, so that no refresh runs under load.
        #[arg(long, default_value_t = 3600)]
        token_ttl: u64,
        /// Where the target's own output goes.
        #[arg(long, default_value = "/dev/null")]
        log: PathBuf,
    },
    /// Render report cards (JSON) as Markdown.
    Render {
        /// Where the Markdown goes.
        #[arg(long)]
        out: PathBuf,
        /// The command that produced the cards, quoted in the report.
        #[arg(long)]
        command: String,
        /// Cards, in the order of the table's columns.
        cards: Vec<PathBuf>,
    },
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

#[derive(Debug, clap::Args)]
struct ReportArgs {
    /// The target's profile (`crates/conformance/targets/NAME/profile.toml`); it says how to start it.
    #[arg(long, conflicts_with_all = ["reference", "launch", "target"])]
    profile: Option<PathBuf>,
    /// This repository's server under a preset, started with `--launch` at `--target`; it is also held to
    /// the full model comparison.
    #[arg(long, requires_all = ["launch", "target"])]
    reference: Option<String>,
    #[arg(long)]
    launch: Option<String>,
    #[arg(long)]
    target: Option<String>,
    /// Sequences of the full model comparison (reference only).
    #[arg(long, default_value_t = 60)]
    model_sequences: u32,
    /// Sequences per invariant (default: 3 on a wall clock, 12 on a test clock).
    #[arg(long)]
    sequences: Option<u32>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The directory the card (NAME.json) is written to.
    #[arg(long, default_value = "target/conformance/report")]
    out: PathBuf,
    /// Exit 1 unless every invariant holds or does not apply (and the model comparison conforms).
    #[arg(long)]
    strict: bool,
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::CheckTrace { file, policy } => check_trace(&file, policy.as_deref()),
        Command::Run(args) => run(args),
        Command::Report(args) => report_card(args),
        Command::Render { out, command, cards } => render(&out, &command, &cards),
        Command::Hold { profile, token_ttl, log } => hold(&profile, token_ttl, &log),
    }
}

fn hold(path: &std::path::Path, token_ttl: u64, log: &std::path::Path) -> ExitCode {
    let fail = |what: String| {
        eprintln!("{what}");
        ExitCode::from(2)
    };
    let profile = match Profile::load(path) {
        Ok(p) => p,
        Err(e) => return fail(e.to_string()),
    };
    let port = match free_port() {
        Ok(port) => port,
        Err(e) => return fail(format!("no free port: {e}")),
    };
    let target = format!("http://127.0.0.1:{port}");
    let mut options = match Options::from_profile(&target, profile.clone()) {
        Ok(o) => o,
        Err(e) => return fail(e.to_string()),
    };
    options.token_ttl = Duration::from_secs(token_ttl);
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(format!("cannot start the runtime: {e}")),
    };
    let harness = match rt.block_on(Harness::start(options.clone())) {
        Ok(h) => h,
        Err(e) => return fail(e.to_string()),
    };
    let port = port.to_string();
    let extra = [("BFF_CONFORMANCE_PORT", port.as_str()), ("BFF_CONFORMANCE_ORIGIN", target.as_str())];
    let cwd = (!profile.dir.as_os_str().is_empty()).then_some(profile.dir.as_path());
    let output = match std::fs::File::create(log) {
        Ok(f) => f,
        Err(e) => return fail(format!("cannot create {}: {e}", log.display())),
    };
    let child = match launch_in(&profile.launch, &harness.provider.issuer, &extra, cwd, Some(output)) {
        Ok(child) => child,
        Err(e) => return fail(format!("cannot launch {}: {e}", profile.title)),
    };
    if !rt.block_on(harness.wait_for_target(Duration::from_secs(120))) {
        return fail(format!("{} did not start: nothing answers at {target}", profile.title));
    }
    let signed_in = rt.block_on(harness.sign_in_one());
    let cookie = match signed_in {
        Ok(cookie) => cookie,
        Err(e) => return fail(format!("cannot sign in to {}: {e}", profile.title)),
    };
    let line = serde_json::json!({
        "title": profile.title,
        "origin": target,
        "session_path": options.mapping.session,
        "cookie": cookie,
        "pid": child.0.id(),
        "versions": versions(&profile),
    });
    println!("{line}");
    // Held until whoever started this closes our standard input.
    let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new());
    drop(child);
    ExitCode::SUCCESS
}

fn render(out: &std::path::Path, command: &str, paths: &[PathBuf]) -> ExitCode {
    let mut cards = Vec::new();
    for path in paths {
        let card = std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|text| serde_json::from_str::<Card>(&text).map_err(|e| e.to_string()));
        match card {
            Ok(c) => cards.push(c),
            Err(e) => {
                eprintln!("cannot read the card {}: {e}", path.display());
                return ExitCode::from(2);
            }
        }
    }
    if let Err(e) = std::fs::write(out, report::render(&cards, command)) {
        eprintln!("cannot write {}: {e}", out.display());
        return ExitCode::from(2);
    }
    print!("{}", report::table(&cards));
    ExitCode::SUCCESS
}

fn free_port() -> std::io::Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port())
}

/// The lines a profile's `versions` command prints.
fn versions(profile: &Profile) -> Vec<String> {
    let Some(cmd) = &profile.versions else { return vec![format!("{} (this repository)", profile.title)] };
    let mut command = std::process::Command::new("sh");
    if !profile.dir.as_os_str().is_empty() {
        command.current_dir(&profile.dir);
    }
    match command.arg("-c").arg(cmd).output() {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect(),
        Ok(out) => vec![format!("(the versions command failed: {})", String::from_utf8_lossy(&out.stderr).trim())],
        Err(e) => vec![format!("(the versions command could not run: {e})")],
    }
}

fn report_card(args: ReportArgs) -> ExitCode {
    let (profile, target, launch_cmd) = match (&args.profile, &args.reference) {
        (Some(path), _) => match Profile::load(path) {
            Ok(p) => {
                let port = match free_port() {
                    Ok(port) => port,
                    Err(e) => {
                        eprintln!("no free port: {e}");
                        return ExitCode::from(2);
                    }
                };
                let launch = p.launch.clone();
                (p, format!("http://127.0.0.1:{port}"), launch)
            }
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(2);
            }
        },
        (None, Some(preset)) => match Profile::reference(preset) {
            Ok(p) => (p, args.target.clone().unwrap_or_default(), args.launch.clone().unwrap_or_default()),
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(2);
            }
        },
        (None, None) => {
            eprintln!("give --profile FILE, or --reference PRESET with --launch and --target");
            return ExitCode::from(2);
        }
    };
    let mut options = match Options::from_profile(&target, profile.clone()) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    options.sequences = args.model_sequences;
    options.seed = args.seed;
    options.out_dir = args.out.clone();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let started = Instant::now();
    let harness = match rt.block_on(Harness::start(options.clone())) {
        Ok(h) => Arc::new(h),
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let port = target.rsplit(':').next().unwrap_or_default().to_owned();
    let extra = [("BFF_CONFORMANCE_PORT", port.as_str()), ("BFF_CONFORMANCE_ORIGIN", target.as_str())];
    let cwd = (!profile.dir.as_os_str().is_empty()).then_some(profile.dir.as_path());
    let log = args.out.join(format!("{}.log", profile.name));
    let output = std::fs::create_dir_all(&args.out).and_then(|()| std::fs::File::create(&log));
    let output = match output {
        Ok(f) => Some(f),
        Err(e) => {
            eprintln!("cannot create {}: {e}", log.display());
            return ExitCode::from(2);
        }
    };
    let _child = match launch_in(&launch_cmd, &harness.provider.issuer, &extra, cwd, output) {
        Ok(child) => child,
        Err(e) => {
            eprintln!("cannot launch {}: {e}", profile.title);
            return ExitCode::from(2);
        }
    };
    if !rt.block_on(harness.wait_for_target(Duration::from_secs(120))) {
        eprintln!("{} did not start: nothing answers at {target} (its output: {})", profile.title, log.display());
        return ExitCode::from(2);
    }
    println!("{}: running at {target}, provider {}", profile.title, harness.provider.issuer);
    let model_comparison = args.reference.as_ref().map(|_| {
        let report = harness.run(&rt);
        let text = report.render(&options);
        print!("{text}");
        text.lines().next().unwrap_or_default().to_owned()
    });
    let mut effort = Effort::for_clock(profile.clock, args.seed);
    if let Some(n) = args.sequences {
        effort.sequences = n;
    }
    let verdicts = rt.block_on(verdict::evaluate(harness.clone(), effort));
    let policy = &options.policy;
    let card = Card {
        target: profile.name.clone(),
        title: profile.title.clone(),
        versions: versions(&profile),
        clock: match profile.clock {
            ClockMode::Wall => "wall".into(),
            ClockMode::Test => "test".into(),
        },
        tolerance_ms: if profile.clock == ClockMode::Wall { TOLERANCE.as_millis() as u64 } else { 0 },
        policy: format!(
            "access token {} s, idle {}, absolute {} s, refresh {} s before expiry",
            options.token_ttl.as_secs(),
            policy.idle_timeout.map_or("none".to_owned(), |d| format!("{} s", d.as_secs())),
            policy.absolute_lifetime.as_secs(),
            (policy.refresh_margin + policy.clock_skew).as_secs()
        ),
        elapsed_secs: started.elapsed().as_secs_f64(),
        steps: harness.steps(),
        model_comparison,
        verdicts,
        notes: profile.notes.clone(),
        confirmed_by: profile.confirmed_by.clone(),
    };
    for v in &card.verdicts {
        let detail = v.reproducer.as_ref().map(|r| format!(": expected {}, observed {}", r.expected, r.observed));
        println!(
            "  {:<34} {:?} ({} sequences){}",
            v.invariant.name(),
            v.outcome,
            v.exercised,
            detail.unwrap_or_default()
        );
    }
    let path = args.out.join(format!("{}.json", profile.name));
    let written = std::fs::create_dir_all(&args.out)
        .and_then(|()| serde_json::to_string_pretty(&card).map_err(std::io::Error::other))
        .and_then(|json| std::fs::write(&path, json));
    if let Err(e) = written {
        eprintln!("cannot write {}: {e}", path.display());
        return ExitCode::from(2);
    }
    println!("{}: {:.0} s, card {}", profile.title, card.elapsed_secs, path.display());
    let applicable = card.verdicts.iter().filter(|v| v.outcome != Outcome::NotApplicable);
    if applicable.clone().count() > 0 && applicable.clone().all(|v| v.outcome == Outcome::Inconclusive) {
        eprintln!("{} started but could not be driven through any sequence", profile.title);
        return ExitCode::from(2);
    }
    if args.strict && !card.clean() { ExitCode::FAILURE } else { ExitCode::SUCCESS }
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
        // The whole group: a launch script's children (httpd's workers, node) go with it.
        if let Ok(pid) = i32::try_from(self.0.id()) {
            let _ = std::process::Command::new("kill").args(["-TERM", "--", &format!("-{pid}")]).status();
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn launch(cmd: &str, issuer: &str) -> std::io::Result<Launched> {
    launch_in(cmd, issuer, &[], None, None)
}

fn launch_in(
    cmd: &str,
    issuer: &str,
    extra: &[(&str, &str)],
    cwd: Option<&std::path::Path>,
    output: Option<std::fs::File>,
) -> std::io::Result<Launched> {
    let mut command = std::process::Command::new("sh");
    if let Some(file) = output {
        // The target's own logging goes to its log file, beside its card.
        command.stderr(file.try_clone()?).stdout(file);
    }
    if let Some(dir) = cwd {
        command.current_dir(dir);
    }
    // Its own process group, so stopping the target stops whatever its launch script started.
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    command
        .envs(extra.iter().copied())
        .arg("-c")
        .arg(cmd)
        .env("BFF_CONFORMANCE_ISSUER", issuer)
        .env("BFF_CONFORMANCE_CLIENT_ID", provider::CLIENT_ID)
        .env("BFF_CONFORMANCE_CLIENT_SECRET", provider::CLIENT_SECRET)
        .env("BFF_CONFORMANCE_UPSTREAM", issuer)
        .spawn()
        .map(Launched)
}
