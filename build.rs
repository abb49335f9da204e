//! Records the commit the binary is built from, for `as2box --version`: `git rev-parse
//! --short HEAD` when this is a git checkout, else `AS2BOX_COMMIT` from the environment
//! (a build from a source tarball can set it), else "unknown".

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-env-changed=AS2BOX_COMMIT");
    let commit = std::env::var("AS2BOX_COMMIT")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    // Build again when HEAD moves: HEAD itself (a checkout) and the branch it points to (a
    // commit); both paths work in a worktree too.
    // Only files that exist: a missing one would run this script on every build.
    let watch = |p: Option<String>| {
        if let Some(p) = p.filter(|p| std::path::Path::new(p).exists()) {
            println!("cargo:rerun-if-changed={p}");
        }
    };
    watch(git(&["rev-parse", "--git-path", "HEAD"]));
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watch(git(&["rev-parse", "--git-path", &branch]));
        watch(git(&["rev-parse", "--git-path", "packed-refs"]));
    }
    println!("cargo:rustc-env=AS2BOX_COMMIT={commit}");
}
