//! Generates the man pages and shell completions that the packages ship, from the clap
//! definitions of the `as2box` command (so they never drift from `--help`):
//!
//! ```sh
//! cargo run --release --example generate-assets -- target/assets
//! ```
//!
//! writes `DIR/man/as2box.1.gz`, `DIR/man/as2box-<subcommand>[-<subcommand>].1.gz` (one
//! page per command, nested ones included) and `DIR/completions/{as2box.bash,_as2box,
//! as2box.fish}`. `scripts/package` runs it. It is an example rather than a subcommand so
//! that clap_mangen and clap_complete stay dev-dependencies, out of the shipped binary.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap_complete::Shell;

fn gzip(path: &Path) -> std::io::Result<()> {
    let data = std::fs::read(path)?;
    let out = std::fs::File::create(path.with_extension("1.gz"))?;
    let mut gz = flate2::write::GzEncoder::new(out, flate2::Compression::best());
    gz.write_all(&data)?;
    gz.finish()?.sync_all()?;
    std::fs::remove_file(path)
}

fn main() -> std::io::Result<()> {
    let dir = PathBuf::from(
        std::env::args_os()
            .nth(1)
            .expect("usage: generate-assets DIR"),
    );
    let man = dir.join("man");
    let completions = dir.join("completions");
    for d in [&man, &completions] {
        let _ = std::fs::remove_dir_all(d);
        std::fs::create_dir_all(d)?;
    }
    let cmd = as2box::cli::command();
    clap_mangen::generate_to(cmd.clone(), &man)?;
    let mut pages = 0;
    for entry in std::fs::read_dir(&man)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "1") {
            gzip(&path)?;
            pages += 1;
        }
    }
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let mut cmd = cmd.clone();
        clap_complete::generate_to(shell, &mut cmd, "as2box", &completions)?;
    }
    println!(
        "generate-assets: {pages} man pages in {}, completions in {}",
        man.display(),
        completions.display()
    );
    Ok(())
}
