//! Fixtures shared by the criterion benchmarks (`benches/`), the load test (`src/bin/loadtest.rs`) and the
//! peer comparison (`src/bin/peers.rs`): sessions, the JSON every compared handler answers, and wrk.

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use bff_session_core::{Device, Login, NewSession, OidcIdentity, Secret, SessionId, TokenGrant, UserId};

/// A session ID derived from `n` and a tag, so different benchmarks never share IDs.
pub fn id(tag: u8, n: u64) -> SessionId {
    let mut bytes = [tag; 32];
    bytes[..8].copy_from_slice(&n.to_le_bytes());
    SessionId::from_random_bytes(bytes)
}

/// A session as a real login leaves it: OIDC, an 800-byte access token, a refresh token and a 900-byte ID
/// token (about 1.8 KB sealed), spread over `users` users.
pub fn oidc_session(tag: u8, n: u64, users: u64, expires_in: Duration) -> NewSession {
    let sub = format!("user{}", n % users.max(1));
    NewSession {
        id: id(tag, n),
        user: UserId::new(sub.clone()),
        login: Login::Oidc {
            identity: OidcIdentity {
                iss: "https://idp.example".into(),
                sub,
                sid: Some(format!("sid{n}")),
                name: None,
                email: None,
            },
            grant: TokenGrant {
                access_token: Secret::new("a".repeat(800)),
                expires_in: Some(expires_in),
                refresh_token: Some(Secret::new("r".repeat(43))),
                refresh_expires_in: None,
                id_token: Some(Secret::new("i".repeat(900))),
            },
        },
        device: Device {
            user_agent: "Mozilla/5.0 (X11; Linux x86_64) bench".into(),
            client_ip: Some([10, 1, 2, 3].into()),
        },
    }
}

/// The body of `GET /auth/session` for a signed-in user, which the bare handlers answer too.
pub const SESSION_JSON: &str = r#"{"csrf_token":"JqsiWFXMvOnl-_CIk5ZBHlY6ywxVSZwXulYtItGxzXY","session":{"absolute_deadline":1796331142184,"access_token_expires_at":1795726462184,"created_at":1795726342184,"handle":"WjLkkJ68Gu7cFU_Bg25Rrw","idle_deadline":1795769542184,"last_used_at":1795726342184},"user":{"email":"bench@example.test","name":"Bench","sub":"bench"}}"#;

fn duration_ms(s: &str) -> f64 {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len()));
    let n: f64 = num.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        _ => f64::NAN,
    }
}

/// One wrk run: requests per second, p50 and p99 latency in ms.
pub fn wrk(url: &str, cookie: Option<&str>, secs: u64, connections: u64) -> Value {
    let mut cmd = Command::new("wrk");
    cmd.args(["-t2", &format!("-c{connections}"), &format!("-d{secs}s"), "--latency"]);
    if let Some(c) = cookie {
        cmd.args(["-H", &format!("Cookie: {c}")]);
    }
    let out = cmd.arg(url).output().expect("wrk runs (cargo xtask bench installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    let pick =
        |prefix: &str| text.lines().find_map(|l| l.trim().strip_prefix(prefix).map(str::trim).map(str::to_owned));
    let non2xx = pick("Non-2xx or 3xx responses:").and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    json!({
        "rps": pick("Requests/sec:").and_then(|v| v.parse::<f64>().ok()),
        "p50_ms": pick("50%").map(|v| duration_ms(&v)),
        "p99_ms": pick("99%").map(|v| duration_ms(&v)),
        "non_2xx": non2xx,
    })
}
