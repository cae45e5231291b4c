//! `cargo xtask dist`: the release binary with its manual pages and shell completions, in `target/dist/`.
//!
//! The pages and scripts come from the binary itself (`bff-session man`, `bff-session completions SHELL`,
//! both generated from its clap definition), so they always describe the flags it has.

use std::fs;
use std::process::Command;

use crate::{cargo, root, run};

const SHELLS: [(&str, &str); 3] = [("bash", "bff-session.bash"), ("zsh", "_bff-session"), ("fish", "bff-session.fish")];

pub(crate) fn dist() -> Result<(), String> {
    run(cargo().args(["build", "--release", "-p", "bff-session-server", "--bin", "bff-session"]))?;
    let binary = root().join("target").join("release").join("bff-session");
    let dist = root().join("target").join("dist");
    let (man, completions) = (dist.join("man"), dist.join("completions"));
    for dir in [&man, &completions] {
        fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    fs::copy(&binary, dist.join("bff-session")).map_err(|e| format!("cannot copy {}: {e}", binary.display()))?;
    run(Command::new(&binary).arg("man").arg("--out-dir").arg(&man))?;
    for (shell, file) in SHELLS {
        let out = Command::new(&binary)
            .args(["completions", shell])
            .output()
            .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
        if !out.status.success() {
            return Err(format!("bff-session completions {shell} failed: {}", String::from_utf8_lossy(&out.stderr)));
        }
        let path = completions.join(file);
        fs::write(&path, &out.stdout).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    eprintln!("xtask: {} holds the binary, man/ and completions/", dist.display());
    Ok(())
}
