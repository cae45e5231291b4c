//! The PostgreSQL server tests use: the one `BFF_TEST_POSTGRES` names, or else a throwaway cluster this test
//! process starts itself (with `.ci/postgres`) when the PostgreSQL server binaries are installed, and stops
//! when it exits. With neither, a test that needs it is skipped *visibly*: it says so on stderr and leaves a
//! marker under `target/test-skips/postgres/`, which `cargo xtask test` counts in its last line. With
//! `BFF_REQUIRE_POSTGRES` set, a missing server fails the test instead.
//!
//! Shared by the server's and the conformance harness's tests (`#[path]`).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Whether Debian's (or any) PostgreSQL server binaries are installed, the way `.ci/postgres` finds them.
fn binaries_installed() -> bool {
    std::fs::read_dir("/usr/lib/postgresql")
        .map(|versions| versions.flatten().any(|v| v.path().join("bin/initdb").exists()))
        .unwrap_or(false)
}

/// Starts a cluster for this process on a free port; a watchdog stops and removes it once the process is gone.
fn start_own_cluster() -> Option<String> {
    let dir = std::env::temp_dir().join(format!("bff-session-test-pg-{}", std::process::id()));
    let port = std::net::TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok()?.port();
    let script = workspace().join(".ci/postgres");
    let out = Command::new("bash").arg(&script).args(["start"]).arg(&dir).arg(port.to_string()).output().ok()?;
    if !out.status.success() {
        eprintln!("could not start a throwaway PostgreSQL: {}", String::from_utf8_lossy(&out.stderr));
        return None;
    }
    let url = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let watchdog = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 1; done; bash '{script}' stop '{dir}'; rm -rf '{dir}'",
        pid = std::process::id(),
        script = script.display(),
        dir = dir.display(),
    );
    Command::new("setsid").args(["sh", "-c", &watchdog]).spawn().ok()?;
    Some(url)
}

/// The base URL of the PostgreSQL server tests may use, or `None` when there is none; `test` names the
/// caller for the skip marker.
pub fn base(test: &str) -> Option<String> {
    static BASE: OnceLock<Option<String>> = OnceLock::new();
    let base = BASE
        .get_or_init(|| {
            std::env::var("BFF_TEST_POSTGRES")
                .ok()
                .filter(|u| !u.is_empty())
                .or_else(|| binaries_installed().then(start_own_cluster).flatten())
        })
        .clone();
    if base.is_none() {
        assert!(
            std::env::var("BFF_REQUIRE_POSTGRES").is_err(),
            "BFF_REQUIRE_POSTGRES is set but there is no PostgreSQL: set BFF_TEST_POSTGRES or install postgresql"
        );
        eprintln!("SKIPPED {test}: no PostgreSQL (install postgresql, or set BFF_TEST_POSTGRES)");
        let marks = workspace().join("target/test-skips/postgres");
        let _ = std::fs::create_dir_all(&marks);
        let _ = std::fs::write(marks.join(test), b"");
    }
    base
}

/// A database of its own named after `name`, created (dropped first if left over) once per process on the
/// server [`base`] finds, so tests running in parallel never share tables; `test` names the caller for the
/// skip marker.
pub fn fresh_database(test: &str, name: &str) -> Option<String> {
    static CREATED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let base = base(test)?;
    let db =
        format!("bff_t_{}", name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect::<String>())
            .to_ascii_lowercase();
    let mut created = CREATED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if !created.contains(&db) {
        let base = base.clone();
        let statements = [format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"), format!("CREATE DATABASE {db}")];
        // On a thread of its own: the caller may be inside a runtime already.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let (client, conn) = tokio_postgres::connect(&base, tokio_postgres::NoTls).await.unwrap();
                tokio::spawn(conn);
                for statement in &statements {
                    client.batch_execute(statement).await.unwrap();
                }
            });
        })
        .join()
        .unwrap();
        created.push(db.clone());
    }
    let mut url = url::Url::parse(&base).unwrap();
    url.set_path(&db);
    Some(url.to_string())
}
