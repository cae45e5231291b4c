//! `bff-session admin`: the operator's commands against the store `serve` uses.
//!
//! Owns the admin command line, opening the store (and, to revoke, the provider) the way `serve` does, and
//! printing what the commands find. Every decision about a session is core's: a session's standing comes from
//! `census`, a revocation runs core's transition through the [`Service`](crate::service::Service), exactly as a user's logout does.
//! sled lets one process open a database, so against sled these commands run while the server is stopped;
//! PostgreSQL is shared, and they run beside live replicas.

mod key;
mod sessions;

use std::fmt;
use std::io::{IsTerminal as _, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bff_session_core::Policy;
use bff_session_core::census::Census;
use clap::{Args, Subcommand};

use crate::flags::{ConfigError, PolicyArgs};
use crate::oidc::OidcError;
use crate::seal::{KeyFileError, TokenSealer};
use crate::service::ServiceError;
use crate::store::{self, Location, Maintenance, StoreError};

/// `bff-session admin …`.
#[derive(Debug, Args)]
pub struct AdminArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(subcommand)]
    pub command: AdminCommand,
}

/// Where the store is and how to read it: the same flags and variables as `serve`.
#[derive(Debug, Args)]
pub struct StoreArgs {
    /// The store `serve` uses: sled:PATH (default: sled in DATA_DIR) or postgres://USER:PASSWORD@HOST/DB.
    #[arg(long, env = "BFF_SESSION_STORE", value_parser = Location::parse, global = true)]
    pub store: Option<Location>,
    /// `serve`'s data folder (for the default sled store and key file).
    #[arg(long, env = "BFF_SESSION_DATA_DIR", default_value = "data", global = true)]
    pub data_dir: PathBuf,
    /// `serve`'s token key file. Default: DATA_DIR/token.key.
    #[arg(long, env = "BFF_SESSION_KEY_FILE", global = true)]
    pub key_file: Option<PathBuf>,
    /// `serve`'s earlier key files, comma-separated.
    #[arg(long, env = "BFF_SESSION_PREVIOUS_KEY_FILES", value_delimiter = ',', global = true)]
    pub previous_key_files: Vec<PathBuf>,
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// List or end sessions.
    #[command(subcommand)]
    Sessions(sessions::SessionsCommand),
    /// Count sessions by state, the events due in the next minute and hour, and the store's size.
    Stats,
    /// Decode every record and check every index entry against its record; `--repair` puts them right.
    Verify {
        #[arg(long)]
        repair: bool,
    },
    /// Manage the token encryption key.
    #[command(subcommand)]
    Key(key::KeyCommand),
}

/// Why an admin command failed.
#[derive(Debug)]
pub enum AdminError {
    Config(ConfigError),
    Key(KeyFileError),
    Store(StoreError),
    /// sled's database is open in another process, most likely a running server.
    StoreLocked(PathBuf),
    Provider(OidcError),
    Service(ServiceError),
    /// No session has that handle.
    NoSuchHandle(String),
    /// `verify` found damage it did not repair; the report says what.
    Damaged,
    /// Writing the answer failed (a closed pipe).
    Output(String),
}

impl fmt::Display for AdminError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Config(e) => e.fmt(f),
            Self::Key(e) => e.fmt(f),
            Self::Store(e) => e.fmt(f),
            Self::StoreLocked(path) => write!(
                f,
                "the sled database {} is open in another process (a running server?): sled lets only one process \
                 open it, so stop the server first, or use a PostgreSQL store for live administration",
                path.display()
            ),
            Self::Provider(e) => write!(f, "provider: {e}"),
            Self::Service(e) => e.fmt(f),
            Self::Damaged => f.write_str("the store is not clean (see the report above)"),
            Self::NoSuchHandle(h) => write!(f, "no session has the handle {h}"),
            Self::Output(e) => write!(f, "cannot write the answer: {e}"),
        }
    }
}

impl std::error::Error for AdminError {}

impl From<StoreError> for AdminError {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

impl From<ServiceError> for AdminError {
    fn from(e: ServiceError) -> Self {
        Self::Service(e)
    }
}

impl From<std::io::Error> for AdminError {
    fn from(e: std::io::Error) -> Self {
        Self::Output(e.to_string())
    }
}

/// The store, opened for maintenance, with the policy it was written under.
pub(crate) struct Opened {
    pub store: Arc<dyn Maintenance>,
    pub policy: Policy,
}

impl StoreArgs {
    fn location(&self) -> Location {
        self.store.clone().unwrap_or_else(|| Location::Sled(self.data_dir.join("sessions.sled")))
    }

    fn key_file(&self) -> PathBuf {
        self.key_file.clone().unwrap_or_else(|| self.data_dir.join("token.key"))
    }

    /// `serve`'s sealer: its key and earlier ones. Never creates a key: admin reads what `serve` wrote.
    fn sealer(&self) -> Result<TokenSealer, AdminError> {
        TokenSealer::with_previous(&self.key_file(), false, &self.previous_key_files).map_err(AdminError::Key)
    }

    async fn open_with(&self, sealer: TokenSealer) -> Result<Opened, AdminError> {
        let policy = self.policy.policy().map_err(AdminError::Config)?;
        let location = self.location();
        let store = match store::open_for_maintenance(&location, sealer, policy.clone(), 64 << 20).await {
            Ok(store) => store,
            Err(StoreError::Io(e)) if is_lock_error(&e) => {
                let Location::Sled(path) = location else { return Err(StoreError::Io(e).into()) };
                return Err(AdminError::StoreLocked(path));
            }
            Err(e) => return Err(e.into()),
        };
        Ok(Opened { store, policy })
    }

    async fn open(&self) -> Result<Opened, AdminError> {
        self.open_with(self.sealer()?).await
    }
}

/// sled's answer when another process holds the database.
fn is_lock_error(e: &str) -> bool {
    e.contains("could not acquire lock")
}

/// Runs an admin command, writing its answer to `out`.
pub async fn run(args: AdminArgs, out: &mut dyn Write) -> Result<(), AdminError> {
    match &args.command {
        AdminCommand::Sessions(command) => sessions::run(&args.store, command, out).await,
        AdminCommand::Stats => stats(&args.store, out).await,
        AdminCommand::Verify { repair } => verify(&args.store, *repair, out).await,
        AdminCommand::Key(command) => key::run(&args.store, command, out).await,
    }
}

const HORIZONS: [(Duration, &str); 2] = [(Duration::from_secs(60), "minute"), (Duration::from_secs(3600), "hour")];
const HORIZON_LABELS: [&str; 2] = ["due in the next minute", "due in the next hour"];

/// Records read per page of a scan.
const PAGE: usize = 1000;

/// Every stored record, a page at a time, in key order.
pub(crate) struct Pages<'a> {
    store: &'a dyn Maintenance,
    after: Option<bff_session_core::SessionKey>,
    done: bool,
}

impl<'a> Pages<'a> {
    pub(crate) fn of(store: &'a dyn Maintenance) -> Self {
        Self { store, after: None, done: false }
    }

    /// The next page; `None` after the last.
    pub(crate) async fn next(&mut self) -> Result<Option<Vec<store::Scanned>>, StoreError> {
        if self.done {
            return Ok(None);
        }
        let page = self.store.scan(self.after, PAGE).await?;
        match page.last() {
            Some(last) => self.after = Some(last.key),
            None => self.done = true,
        }
        Ok((!page.is_empty()).then_some(page))
    }
}

async fn stats(args: &StoreArgs, out: &mut dyn Write) -> Result<(), AdminError> {
    let Opened { store, policy } = args.open().await?;
    let now = crate::clock::Clock::new(false).now();
    let mut census = Census::new(&HORIZONS.map(|(h, _)| h));
    let mut corrupt = 0u64;
    let bar = progress_bar(store.count().await?, "counting");
    let mut pages = Pages::of(&*store);
    while let Some(page) = pages.next().await? {
        for scanned in &page {
            match &scanned.record {
                Ok(session) => census.count(session, now, &policy),
                Err(_) => corrupt += 1,
            }
        }
        bar.inc(page.len() as u64);
    }
    bar.finish_and_clear();
    let size = store.size_on_disk().await?;
    if args.json {
        let due: serde_json::Map<String, serde_json::Value> = HORIZONS
            .iter()
            .zip(&census.due_within)
            .map(|((_, name), (_, n))| ((*name).to_owned(), (*n).into()))
            .collect();
        let answer = serde_json::json!({
            "active": census.active,
            "expired": census.expired,
            "revoked": census.revoked,
            "undecodable": corrupt,
            "due_within": due,
            "size_on_disk_bytes": size,
        });
        writeln!(out, "{answer}")?;
    } else {
        writeln!(out, "{:<24}{:>12}", "sessions", census.total() + corrupt)?;
        writeln!(out, "{:<24}{:>12}", "  active", census.active)?;
        writeln!(out, "{:<24}{:>12}", "  expired", census.expired)?;
        writeln!(out, "{:<24}{:>12}", "  revoked", census.revoked)?;
        writeln!(out, "{:<24}{:>12}", "  undecodable", corrupt)?;
        for (label, (_, n)) in HORIZON_LABELS.iter().zip(&census.due_within) {
            writeln!(out, "{label:<24}{n:>12}")?;
        }
        writeln!(out, "{:<24}{:>12} bytes", "on disk", size)?;
    }
    Ok(())
}

async fn verify(args: &StoreArgs, repair: bool, out: &mut dyn Write) -> Result<(), AdminError> {
    let Opened { store, .. } = args.open().await?;
    let bar = progress_bar(store.count().await?, if repair { "verifying and repairing" } else { "verifying" });
    let report = store.verify(repair, &|done| bar.set_position(done)).await?;
    bar.finish_and_clear();
    if args.json {
        let keys = |keys: &[bff_session_core::SessionKey]| keys.iter().map(ToString::to_string).collect::<Vec<_>>();
        let answer = serde_json::json!({
            "records": report.records,
            "corrupt": keys(&report.corrupt),
            "unreadable": keys(&report.unreadable),
            "stray_entries": report.stray_entries,
            "missing_entries": report.missing_entries,
            "repaired": report.repaired,
            "clean": report.is_clean(),
        });
        writeln!(out, "{answer}")?;
    } else {
        writeln!(out, "records read                 {}", report.records)?;
        writeln!(out, "corrupt records              {}", report.corrupt.len())?;
        for key in &report.corrupt {
            writeln!(out, "  {key}")?;
        }
        writeln!(out, "tokens the keys do not open  {}", report.unreadable.len())?;
        for key in &report.unreadable {
            writeln!(out, "  {key}")?;
        }
        writeln!(out, "stray index entries          {}", report.stray_entries)?;
        writeln!(out, "missing index entries        {}", report.missing_entries)?;
        let verdict = match (report.is_clean(), report.repaired) {
            (true, true) => "repaired",
            (true, false) => "clean",
            (false, _) if !report.unreadable.is_empty() => {
                "records sealed under a key not given (--previous-key-files?)"
            }
            (false, _) => "damaged: run again with --repair",
        };
        writeln!(out, "verdict                      {verdict}")?;
    }
    if report.is_clean() { Ok(()) } else { Err(AdminError::Damaged) }
}

/// A progress bar on standard error, hidden when that is not a terminal.
pub(crate) fn progress_bar(len: u64, what: &'static str) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len).with_message(what);
    if let Ok(style) = indicatif::ProgressStyle::with_template("{msg} {wide_bar} {pos}/{len} ({eta})") {
        bar.set_style(style);
    }
    bar
}
