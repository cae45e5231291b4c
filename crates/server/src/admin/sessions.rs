//! `admin sessions list|revoke`: the sessions in the store, and ending them as an operator.
//!
//! A revocation runs core's transition through the [`Service`](crate::service::Service) (reason `admin`), durably, and revokes the
//! refresh tokens at the provider before the command returns. It never edits a record itself.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use bff_session_core::census::Standing;
use bff_session_core::{RevocationReason, RevokeAll, Session, UserId};
use clap::{Args, Subcommand, ValueEnum};

use super::{AdminError, Opened, Pages, StoreArgs};
use crate::clock::Clock;
use crate::flags::ClientArgs;
use crate::oidc::{Oidc, RpConfig};
use crate::service::Service;

#[derive(Debug, Subcommand)]
pub enum SessionsCommand {
    /// The sessions in the store, newest first.
    List {
        /// Only this user's.
        #[arg(long)]
        user: Option<String>,
        /// Only active or only ended ones (an active record past a deadline counts as ended).
        #[arg(long, value_enum)]
        state: Option<StateFilter>,
    },
    /// End sessions, durably, and revoke their refresh tokens at the provider.
    Revoke {
        /// Every active session of this user.
        // A subject or a handle (base64url) may begin with `-`; without this, clap takes it for a flag.
        #[arg(long, conflicts_with = "handle", required_unless_present = "handle", allow_hyphen_values = true)]
        user: Option<String>,
        /// The session with this handle (as `sessions list` and the device list show it).
        #[arg(long, allow_hyphen_values = true)]
        handle: Option<String>,
        #[command(flatten)]
        provider: ProviderArgs,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StateFilter {
    Active,
    Ended,
}

/// The provider `serve` signs in with, where the refresh tokens are revoked: the same flags and variables.
#[derive(Debug, Args)]
pub struct ProviderArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// `serve`'s public URL; only to describe the client to the provider library, no login begins here.
    #[arg(long, env = "BFF_SESSION_PUBLIC_URL", default_value = "http://localhost")]
    pub public_url: String,
}

pub(super) async fn run(args: &StoreArgs, command: &SessionsCommand, out: &mut dyn Write) -> Result<(), AdminError> {
    match command {
        SessionsCommand::List { user, state } => list(args, user.as_deref(), *state, out).await,
        SessionsCommand::Revoke { user, handle, provider } => {
            revoke(args, user.as_deref(), handle.as_deref(), provider, out).await
        }
    }
}

async fn list(
    args: &StoreArgs,
    user: Option<&str>,
    state: Option<StateFilter>,
    out: &mut dyn Write,
) -> Result<(), AdminError> {
    let Opened { store, policy } = args.open().await?;
    let now = Clock::new(false).now();
    let mut rows: Vec<(Session, Standing)> = Vec::new();
    let mut pages = Pages::of(&*store);
    while let Some(page) = pages.next().await? {
        for session in page.into_iter().filter_map(|s| s.record.ok()) {
            let standing = Standing::of(&session, now, &policy);
            let wanted = user.is_none_or(|u| session.user().as_str() == u)
                && match state {
                    None => true,
                    Some(StateFilter::Active) => standing.is_active(),
                    Some(StateFilter::Ended) => !standing.is_active(),
                };
            if wanted {
                rows.push((session, standing));
            }
        }
    }
    rows.sort_by_key(|(s, _)| std::cmp::Reverse((s.created_at(), s.key())));
    if args.json {
        let list: Vec<_> = rows
            .iter()
            .map(|(s, standing)| {
                serde_json::json!({
                    "handle": s.handle().to_string(),
                    "user": s.user().as_str(),
                    "state": standing.as_str(),
                    "reason": standing.reason(),
                    "created_at": s.created_at().as_millis(),
                    "last_used_at": s.last_used_at().as_millis(),
                    "user_agent": s.device().user_agent,
                    "client_ip": s.device().client_ip.map(|ip| ip.to_string()),
                })
            })
            .collect();
        writeln!(out, "{}", serde_json::Value::Array(list))?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<22}  {:<20}  {:<8}  {:<18}  {:<20}  {:<20}  DEVICE",
        "HANDLE", "USER", "STATE", "REASON", "CREATED", "LAST USED"
    )?;
    for (s, standing) in &rows {
        writeln!(
            out,
            "{:<22}  {:<20}  {:<8}  {:<18}  {:<20}  {:<20}  {}",
            s.handle().to_string(),
            s.user().as_str(),
            standing.as_str(),
            standing.reason().unwrap_or("-"),
            utc(s.created_at()),
            utc(s.last_used_at()),
            s.device().user_agent,
        )?;
    }
    writeln!(out, "{} sessions", rows.len())?;
    Ok(())
}

fn utc(t: bff_session_core::Timestamp) -> String {
    i64::try_from(t.as_millis())
        .ok()
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map_or_else(|| t.to_string(), |d| d.format("%Y-%m-%d %H:%M:%S").to_string())
}

async fn revoke(
    args: &StoreArgs,
    user: Option<&str>,
    handle: Option<&str>,
    provider: &ProviderArgs,
    out: &mut dyn Write,
) -> Result<(), AdminError> {
    let Opened { store, policy } = args.open().await?;
    let rp = RpConfig {
        issuer: provider.client.issuer.clone(),
        client_id: provider.client.client_id.clone(),
        client_secret: provider.client.client_secret.clone(),
        redirect_uri: format!("{}/auth/callback", provider.public_url.trim_end_matches('/')),
        scopes: vec!["openid".to_owned()],
        skew: policy.clock_skew,
        timeout: Duration::from_secs(10),
    };
    let oidc = Arc::new(Oidc::discover(&rp).await.map_err(AdminError::Provider)?);
    let service = Arc::new(Service::new(policy, Clock::new(false), store.clone(), oidc, rp.timeout));
    let ended = match (user, handle) {
        (Some(user), _) => {
            let plan = RevokeAll::user(UserId::new(user), RevocationReason::Admin);
            service.revoke_all(&plan).await?.outcome
        }
        (None, Some(handle)) => {
            let key = find_handle(&*store, handle).await?.ok_or_else(|| AdminError::NoSuchHandle(handle.to_owned()))?;
            match service.revoke(key, RevocationReason::Admin).await?.outcome {
                Ok(()) => vec![key],
                Err(_) => Vec::new(),
            }
        }
        (None, None) => Vec::new(),
    };
    let drained = service.drain_revocations().await;
    if args.json {
        let keys: Vec<String> = ended.iter().map(ToString::to_string).collect();
        let answer = serde_json::json!({
            "ended": keys,
            "refresh_tokens_revoked": drained.revoked,
            "revocations_failed": drained.failed,
        });
        writeln!(out, "{answer}")?;
    } else {
        writeln!(out, "ended {} sessions", ended.len())?;
        for key in &ended {
            writeln!(out, "  {key}")?;
        }
        writeln!(out, "refresh tokens revoked at the provider: {}", drained.revoked)?;
        if drained.failed > 0 {
            writeln!(
                out,
                "revocations the provider refused or missed: {} (the sessions are ended regardless)",
                drained.failed
            )?;
        }
    }
    Ok(())
}

/// The key of the session whose handle is `handle`, scanning the store.
async fn find_handle(
    store: &dyn crate::store::Maintenance,
    handle: &str,
) -> Result<Option<bff_session_core::SessionKey>, AdminError> {
    let mut pages = Pages::of(store);
    while let Some(page) = pages.next().await? {
        if let Some(found) = page.iter().find(|s| s.record.as_ref().is_ok_and(|r| r.handle().to_string() == handle)) {
            return Ok(Some(found.key));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::SessionsCommand;
    use crate::admin::AdminCommand;
    use crate::config::{Cli, Command};

    fn revoke(args: &[&str]) -> (Option<String>, Option<String>) {
        let base = ["bff-session", "admin", "sessions", "revoke", "--issuer", "http://127.0.0.1:1", "--client-id", "c"];
        let cli = Cli::try_parse_from(base.iter().chain(["--client-secret", "s"].iter()).chain(args)).unwrap();
        match cli.command {
            Command::Admin(a) => match a.command {
                AdminCommand::Sessions(SessionsCommand::Revoke { user, handle, .. }) => (user, handle),
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
    }

    /// One handle in 64 begins with `-` (base64url); it is a value, never mistaken for a flag.
    #[test]
    fn a_handle_or_a_user_may_begin_with_a_hyphen() {
        assert_eq!(revoke(&["--handle", "-6eptbuESrOe7hQgO2QMvw"]).1.as_deref(), Some("-6eptbuESrOe7hQgO2QMvw"));
        assert_eq!(revoke(&["--user", "-bob"]).0.as_deref(), Some("-bob"));
    }
}
