//! The `as2box` command.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "as2box", version, about = "Self-hosted AS2 gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Explain a captured AS2 request or MDN.
    Decode(as2box::cli::decode::DecodeArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Decode(a) => as2box::cli::decode::run(&a),
    }
}
