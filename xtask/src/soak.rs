//! `cargo xtask soak [SECS]`: the release binary under a mixed load with floods and hostile clients
//! (`benches/src/bin/soak.rs`), its figures written into BENCHMARKS.md's soak section.
//!
//! A benchmark, not a test: it asserts nothing about time. It fails only when the server answered a 5xx or
//! left a request unanswered for 10 s (a hang).

use std::fs;
use std::process::Command;

use crate::{cargo, machine, root, run};

const BEGIN: &str = "<!-- soak: written by `cargo xtask soak` -->";
const END: &str = "<!-- /soak -->";

pub(crate) fn soak(secs: u64) -> Result<(), String> {
    run(cargo().args(["build", "--release", "-p", "bff-session-server", "--bin", "bff-session"]))?;
    run(cargo().args(["build", "--release", "-p", "bff-session-benches", "--bin", "soak"]))?;
    let release = root().join("target").join("release");
    eprintln!("xtask: soaking the release binary for {secs} s");
    let out = Command::new(release.join("soak"))
        .arg("--server")
        .arg(release.join("bff-session"))
        .args(["--seconds", &secs.to_string()])
        .output()
        .map_err(|e| format!("cannot run the soak: {e}"))?;
    let figures: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("the soak printed no JSON ({e}): {}", String::from_utf8_lossy(&out.stderr)))?;
    let section = section(&figures);
    let path = root().join("BENCHMARKS.md");
    let old = fs::read_to_string(&path).unwrap_or_default();
    fs::write(&path, with_section(&old, &section)).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    print!("{section}");
    if !out.status.success() {
        return Err(format!("the soak failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(())
}

/// `report` with its soak section replaced by `section` (or `section` appended, when it had none).
pub(crate) fn with_section(report: &str, section: &str) -> String {
    let kept = match (report.find(BEGIN), report.find(END)) {
        (Some(b), Some(e)) if b < e => format!("{}{}", &report[..b], &report[e + END.len()..]),
        _ => report.to_owned(),
    };
    format!("{}\n\n{section}", kept.trim_end())
}

/// The soak section of `report`, if it has one, to carry over when the rest is rewritten.
pub(crate) fn section_of(report: &str) -> Option<&str> {
    let (b, e) = (report.find(BEGIN)?, report.find(END)?);
    (b < e).then(|| &report[b..e + END.len()])
}

fn section(f: &serde_json::Value) -> String {
    let n = |k: &str| f[k].as_u64().unwrap_or(0);
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    format!(
        "{BEGIN}\n## Soak\n\n\
         `cargo xtask soak {secs}` on {machine}: the release binary as `demo` runs it (sled, the embedded \
         provider, the echo upstream, default limits), for {secs} s. Eight clients sign in, make 20 rounds of \
         session read, API read and API write, and sign out, each visit from its own address. All the while: \
         a sign-in flood from one address and one from ever new addresses, a 2 MiB body and a 64 KiB header \
         five times a second, and five new clients a second that trickle their headers.\n\n\
         | figure | value |\n|---|---|\n\
         | responses with a 5xx status / requests unanswered after 10 s | {errors} / {unanswered} |\n\
         | legitimate requests (all during the flood) | {legit} |\n\
         | their latency, p50 / p99 | {p50:.2} ms / {p99:.2} ms |\n\
         | sign-ins and sign-outs completed | {sign_ins} / {logouts} |\n\
         | flood sign-ins / answered 429 | {flood} / {limited} |\n\
         | oversized bodies and headers refused (413, 431) | {oversized} |\n\
         | slow clients cut off / still connected after a minute | {cut} / {held} |\n\
         | peak RSS | {rss:.1} MiB |\n\
         | store on disk at the start / at the end | {start:.2} MiB / {end:.2} MiB |\n\n{END}\n",
        secs = n("seconds"),
        machine = machine(),
        errors = n("server_errors"),
        unanswered = n("unanswered"),
        legit = n("legit_requests"),
        p50 = n("legit_p50_us") as f64 / 1000.0,
        p99 = n("legit_p99_us") as f64 / 1000.0,
        sign_ins = n("sign_ins"),
        logouts = n("logouts"),
        flood = n("flood_requests"),
        limited = n("flood_rate_limited"),
        oversized = n("oversized_refused"),
        cut = n("slow_clients_cut_off"),
        held = n("slow_clients_held_a_minute"),
        rss = n("peak_rss_kib") as f64 / 1024.0,
        start = mib(n("store_start_bytes")),
        end = mib(n("store_end_bytes")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soak_section_is_replaced_or_appended_and_carried_over() {
        let section = format!("{BEGIN}\nnew\n{END}\n");
        assert_eq!(with_section("# B\n\nrows\n", &section), format!("# B\n\nrows\n\n{section}"));
        let old = format!("# B\n\n{BEGIN}\nold\n{END}\n\nmore\n");
        let new = with_section(&old, &section);
        assert!(new.contains("new") && !new.contains("old") && new.contains("more"), "{new}");
        assert_eq!(section_of(&new), Some(section.trim_end()));
        assert_eq!(section_of("# B"), None);
    }
}
