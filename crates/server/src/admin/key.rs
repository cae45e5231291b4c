//! `admin key rotate`: re-sealing every record's tokens under a new key.
//!
//! Each record is re-sealed on its own, by a compare-and-swap on its stored bytes, and each page of records is
//! made durable before the next begins; a record already under the new key is left alone. So a rotation
//! killed at any point is finished by running it again, and a replica's concurrent write simply wins (the
//! replica, started with the new key and the old one as `--previous-key-files`, seals under the new key
//! itself). It never changes a record's content or version.

use std::io::Write;
use std::path::PathBuf;

use clap::Subcommand;

use super::{AdminError, Opened, Pages, StoreArgs, progress_bar};
use crate::seal::TokenSealer;
use crate::store::{Resealed, StoreError};

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Re-seal every record's tokens under the key in FILE (created, 0600, if absent), reading them with
    /// --key-file and --previous-key-files. Safe to interrupt and run again; see deploy/README.md for the
    /// order of steps while replicas serve.
    Rotate {
        #[arg(long, value_name = "FILE")]
        new_key: PathBuf,
    },
}

/// Attempts at one record against concurrent writers before it is counted as skipped.
const ATTEMPTS: usize = 8;

/// What a rotation did.
#[derive(Debug, Default)]
struct Rotation {
    resealed: u64,
    current: u64,
    gone: u64,
    /// Records that do not decode, or kept changing under concurrent writes: `admin verify` says which.
    skipped: u64,
}

pub(super) async fn run(args: &StoreArgs, command: &KeyCommand, out: &mut dyn Write) -> Result<(), AdminError> {
    let KeyCommand::Rotate { new_key } = command;
    let sealer = TokenSealer::from_file(new_key, true).map_err(AdminError::Key)?.accepting(args.sealer()?);
    let Opened { store, .. } = args.open_with(sealer).await?;
    let bar = progress_bar(store.count().await?, "re-sealing");
    let mut rotation = Rotation::default();
    let mut pages = Pages::of(&*store);
    while let Some(page) = pages.next().await? {
        for scanned in &page {
            rotation.count(reseal(&*store, &scanned.key).await?);
            bar.inc(1);
        }
        // Durable before the next page, so a rerun after a crash finds this one done.
        store.flush().await?;
        tracing::debug!(resealed = rotation.resealed, current = rotation.current, "key rotate: page durable");
    }
    bar.finish_and_clear();
    if args.json {
        let answer = serde_json::json!({
            "resealed": rotation.resealed,
            "already_current": rotation.current,
            "gone": rotation.gone,
            "skipped": rotation.skipped,
        });
        writeln!(out, "{answer}")?;
    } else {
        writeln!(out, "re-sealed under the new key   {}", rotation.resealed)?;
        writeln!(out, "already under the new key     {}", rotation.current)?;
        writeln!(out, "ended and deleted meanwhile   {}", rotation.gone)?;
        writeln!(out, "skipped (see admin verify)    {}", rotation.skipped)?;
    }
    Ok(())
}

impl Rotation {
    fn count(&mut self, outcome: Option<Resealed>) {
        match outcome {
            Some(Resealed::Resealed) => self.resealed += 1,
            Some(Resealed::Current) => self.current += 1,
            Some(Resealed::Gone) => self.gone += 1,
            None => self.skipped += 1,
        }
    }
}

/// One record re-sealed, retried against concurrent writes; `None` for one that cannot be.
async fn reseal(
    store: &dyn crate::store::Maintenance,
    key: &bff_session_core::SessionKey,
) -> Result<Option<Resealed>, AdminError> {
    for _ in 0..ATTEMPTS {
        match store.reseal(key).await {
            Ok(outcome) => return Ok(Some(outcome)),
            Err(StoreError::Conflict) => continue,
            Err(StoreError::Corrupt { key, error }) => {
                tracing::warn!(session = %key, %error, "record skipped: it does not decode");
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        }
    }
    tracing::warn!(session = %key, "record skipped: it kept changing under concurrent writes");
    Ok(None)
}
