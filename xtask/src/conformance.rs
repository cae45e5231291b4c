//! The conformance workflows: the harness against this repository's server, and the report cards of every
//! target (`CONFORMANCE.md`).
//!
//! Installs the peers (Apache httpd and mod_auth_openidc from Debian, express-openid-connect from npm),
//! starts each through the harness binary, and renders the cards. It judges nothing itself.

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command};

use crate::{apt_install, bff_presets, cargo, root, run};

/// The third-party targets, by their directory under `crates/conformance/targets/`.
const PEERS: [&str; 3] = ["apache", "express-cookie", "express-store"];

/// Sequences of the full model comparison per preset in the report.
const MODEL_SEQUENCES: u32 = 100;

/// Runs the harness binary against the reference server binary under every preset; the harness starts its
/// provider, then the server (pointed at it, with the test clock and an audit trail), and checks the trail.
pub fn conformance(sequences: u32) -> Result<(), String> {
    run(cargo().args(["build", "-p", "bff-session-server", "-p", "bff-session-conformance"]))?;
    let bin = root().join("target/debug");
    for (seed, preset) in bff_presets().into_iter().enumerate() {
        let dir = fresh_dir(&root().join("target/conformance").join(preset))?;
        let audit = dir.join("audit.jsonl");
        let (target, launch) = reference_launch(preset, &dir, &format!("--audit-log {}", audit.display()))?;
        run(Command::new(bin.join("bff-session-conformance")).current_dir(root()).args([
            "run",
            "--target",
            &target,
            "--policy",
            preset,
            "--sequences",
            &sequences.to_string(),
            "--seed",
            &seed.to_string(),
            "--provider-listen",
            "127.0.0.1:0",
            "--launch",
            &launch,
            "--trace",
            &audit.display().to_string(),
        ]))?;
    }
    Ok(())
}

fn fresh_dir(dir: &std::path::Path) -> Result<PathBuf, String> {
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(dir.to_owned())
}

/// The origin and the launch command of the reference server under `preset`, its files in `dir`, with
/// `extra` flags.
fn reference_launch(preset: &str, dir: &std::path::Path, extra: &str) -> Result<(String, String), String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("no free port: {e}"))?
        .port();
    let target = format!("http://127.0.0.1:{port}");
    let launch = format!(
        "exec {server} serve --listen 127.0.0.1:{port} --public-url {target} --issuer \"$BFF_CONFORMANCE_ISSUER\" \
         --client-id \"$BFF_CONFORMANCE_CLIENT_ID\" --client-secret \"$BFF_CONFORMANCE_CLIENT_SECRET\" \
         --upstream \"$BFF_CONFORMANCE_UPSTREAM\" --test-clock --login-rate 0 --metrics-listen off --policy {preset} --data-dir {data} {extra} >{log} 2>&1",
        server = root().join("target/debug/bff-session").display(),
        data = dir.join("data").display(),
        log = dir.join("server.log").display(),
    );
    Ok((target, launch))
}

/// Installs the peers when missing: Apache httpd and mod_auth_openidc (Debian), Node (Debian) and the
/// express target's packages (npm, from its lock file).
pub(crate) fn install_peers() -> Result<(), String> {
    let installed = |pkg: &str| {
        Command::new("dpkg-query")
            .args(["-W", "-f=${Status}", pkg])
            .output()
            .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
    };
    let missing: Vec<&str> = ["apache2", "libapache2-mod-auth-openidc"].into_iter().filter(|p| !installed(p)).collect();
    let node = Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success());
    let mut packages = missing;
    if !node {
        packages.extend(["nodejs", "npm"]);
    }
    if !packages.is_empty() {
        apt_install(&packages)?;
    }
    let express = root().join("crates/conformance/targets/express");
    run(Command::new("npm").args(["ci", "--no-audit", "--no-fund", "--silent"]).current_dir(express))
}

/// `cargo xtask conformance-report`: every target's card, then `CONFORMANCE.md` and the README's table.
/// Fails when this repository's server violates anything or a third-party target cannot be started; a
/// third-party violation is the report's content.
pub fn report() -> Result<(), String> {
    install_peers()?;
    run(cargo().args(["build", "-p", "bff-session-server", "-p", "bff-session-conformance"]))?;
    let harness = root().join("target/debug/bff-session-conformance");
    let out = fresh_dir(&root().join("target/conformance/report"))?;
    let out_arg = out.display().to_string();
    let mut cards = Vec::new();
    let mut failures = Vec::new();

    // The peers run on real time, side by side (each has its own provider and port), while this
    // repository's server runs its presets on its test clock.
    let mut peers: Vec<(&str, Child)> = Vec::new();
    for peer in PEERS {
        let profile = root().join("crates/conformance/targets").join(peer).join("profile.toml");
        let log = fs::File::create(out.join(format!("{peer}.harness.log")))
            .map_err(|e| format!("cannot create the harness log of {peer}: {e}"))?;
        let err = log.try_clone().map_err(|e| e.to_string())?;
        eprintln!("xtask: starting the report of {peer} (its log: target/conformance/report/{peer}.harness.log)");
        let child = Command::new(&harness)
            .current_dir(root())
            .args(["report", "--profile", &profile.display().to_string(), "--out", &out_arg])
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start the harness for {peer}: {e}"))?;
        peers.push((peer, child));
    }
    for (seed, preset) in bff_presets().into_iter().enumerate() {
        let dir = fresh_dir(&root().join("target/conformance/report-server").join(preset))?;
        let (target, launch) = reference_launch(preset, &dir, "")?;
        let status = Command::new(&harness)
            .current_dir(root())
            .args(["report", "--reference", preset, "--launch", &launch, "--target", &target, "--strict"])
            .args(["--model-sequences", &MODEL_SEQUENCES.to_string(), "--seed", &seed.to_string(), "--out", &out_arg])
            .status()
            .map_err(|e| format!("cannot start the harness: {e}"))?;
        if !status.success() {
            failures.push(format!("bff-session under {preset} does not conform ({status})"));
        }
        cards.push(out.join(format!("bff-session-{preset}.json")));
    }
    for (peer, mut child) in peers {
        let status = child.wait().map_err(|e| format!("the harness for {peer}: {e}"))?;
        let log = fs::read_to_string(out.join(format!("{peer}.harness.log"))).unwrap_or_default();
        eprint!("{log}");
        if !status.success() {
            failures.push(format!("{peer} could not be run ({status}); see target/conformance/report/{peer}.log"));
        }
    }
    for peer in PEERS {
        let name = match peer {
            "apache" => "apache-mod-auth-openidc",
            other => other,
        };
        cards.push(out.join(format!("{name}.json")));
    }
    let present: Vec<String> = cards.iter().filter(|c| c.exists()).map(|c| c.display().to_string()).collect();
    let markdown = root().join("CONFORMANCE.md");
    run(Command::new(&harness)
        .current_dir(root())
        .args(["render", "--out", &markdown.display().to_string(), "--command", "cargo xtask conformance-report"])
        .args(&present))?;
    update_readme_table()?;
    // Every violation reported against a peer, reproduced without the harness.
    if let Err(e) = run(cargo().args(["test", "-p", "bff-session-conformance", "--test", "peers", "--", "--ignored"])) {
        failures.push(format!("a reported violation is not reproduced by its plain test: {e}"));
    }
    if failures.is_empty() { Ok(()) } else { Err(failures.join("; ")) }
}

const TABLE_START: &str = "<!-- conformance table: generated by cargo xtask conformance-report -->";
const TABLE_END: &str = "<!-- end of conformance table -->";

/// Copies the table at the top of `CONFORMANCE.md` into the README, between its markers.
fn update_readme_table() -> Result<(), String> {
    let report = fs::read_to_string(root().join("CONFORMANCE.md")).map_err(|e| format!("CONFORMANCE.md: {e}"))?;
    let table: Vec<&str> =
        report.lines().skip_while(|l| !l.starts_with("| invariant")).take_while(|l| l.starts_with('|')).collect();
    let readme_path = root().join("README.md");
    let readme = fs::read_to_string(&readme_path).map_err(|e| format!("README.md: {e}"))?;
    let (Some(start), Some(end)) = (readme.find(TABLE_START), readme.find(TABLE_END)) else {
        return Err(format!("README.md has no {TABLE_START} … {TABLE_END} markers"));
    };
    let updated = format!("{}{TABLE_START}\n{}\n{}", &readme[..start], table.join("\n"), &readme[end..]);
    fs::write(&readme_path, updated).map_err(|e| format!("README.md: {e}"))
}
