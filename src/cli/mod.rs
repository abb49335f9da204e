//! The `as2box` command line: one file per command group. This is the binary edge, so
//! errors are `anyhow` here and typed everywhere below.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Config;

mod admin;
mod alerts;
mod audit;
pub mod decode;
mod doctor;
mod export;
mod messages;
mod mount;
mod partner;
mod serve;
mod sshd;
mod station;
mod user;

/// Options that every command takes.
#[derive(Debug, Clone, clap::Args)]
pub struct Global {
    /// Folder with the database and the file contents (blobs).
    #[arg(
        long,
        global = true,
        env = "AS2BOX_STATE_DIR",
        default_value = "/var/lib/as2box"
    )]
    pub state_dir: PathBuf,
    /// Settings file (TOML). A missing file means all defaults.
    #[arg(
        long,
        global = true,
        env = "AS2BOX_CONFIG",
        default_value = "/etc/as2box/as2box.toml"
    )]
    pub config: PathBuf,
}

impl Global {
    /// Reads the settings file.
    pub fn load_config(&self) -> anyhow::Result<Config> {
        Ok(Config::load(&self.config)?)
    }

    /// Opens the store, which must have been created by `as2box init`.
    pub fn open_store(&self) -> anyhow::Result<crate::store::Store> {
        Ok(crate::store::Store::open(&self.state_dir)?)
    }
}

/// `as2box --version`: the package version and the commit it was built from (build.rs).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("AS2BOX_COMMIT"),
    ")"
);

#[derive(Debug, Parser)]
#[command(
    name = "as2box",
    version = VERSION,
    about = "A self-hosted AS2 gateway whose users exchange files through SFTP mailboxes",
    after_help = "Example, a first setup as root:\n  as2box init\n  as2box user add acme\n  as2box station add --user acme ACME-AS2\n  as2box partner add --user acme BIGCORP --url https://as2.bigcorp.example/as2\n  as2box mount &\n\nEvery command has its own --help with an example."
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the state folder and the database (safe to run again).
    Init(admin::InitArgs),
    /// Mailbox users: each is a system account that logs in over SFTP.
    #[command(subcommand)]
    User(user::UserCommand),
    /// Stations: our own AS2 identities, each owned by one user.
    #[command(subcommand)]
    Station(station::StationCommand),
    /// Partners: the trading partners' AS2 identities, per user.
    #[command(subcommand)]
    Partner(partner::PartnerCommand),
    /// Messages sent and received.
    #[command(subcommand)]
    Messages(messages::MessagesCommand),
    /// Mount the mailbox filesystem (runs in the foreground until unmounted).
    Mount(mount::MountArgs),
    /// Run the AS2 daemon: send queued messages, receive into inboxes, MDNs, retries.
    Serve(serve::ServeArgs),
    /// Deliver files into an inbox as one received message.
    Deliver(admin::DeliverArgs),
    /// Remove expired mailbox files and message records now.
    Gc(admin::GcArgs),
    /// Print the sshd configuration of the dedicated SFTP instance (or the drop-in).
    SshdConfig(sshd::SshdConfigArgs),
    /// Show what users did through their mailboxes (uploads, downloads, deletions, ...).
    Audit(audit::AuditArgs),
    /// Explain a captured AS2 request or MDN: security, MIC, attachments, disposition.
    Decode(decode::DecodeArgs),
    /// Check that the gateway can work: mount, sshd, serve, store, certificates, disk, ...
    Doctor(doctor::DoctorArgs),
    /// Alerts (`[alerts]` in as2box.toml): send a test alert.
    #[command(subcommand)]
    Alerts(alerts::AlertsCommand),
}

/// The whole command line definition (for generating man pages and completions:
/// `examples/generate-assets.rs`).
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

/// Runs the command line and turns errors into a message and exit status 1.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("as2box: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("AS2BOX_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let g = &cli.global;
    // `alerts test` writes to a command that may not read its input: EPIPE, not death.
    if !matches!(
        cli.command,
        Command::Mount(_) | Command::Serve(_) | Command::Alerts(_)
    ) {
        // Like every Unix tool, stop quietly when the reader of our output goes away
        // (`as2box messages list | head`). The daemons keep Rust's default of ignoring
        // SIGPIPE: a partner hanging up must be an error on the socket, not our death.
        // SAFETY: setting a signal disposition before any thread is started.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    match cli.command {
        Command::Init(a) => admin::init(g, a),
        Command::User(c) => user::run(g, c),
        Command::Station(c) => station::run(g, c),
        Command::Partner(c) => partner::run(g, c),
        Command::Messages(c) => messages::run(g, c),
        Command::Mount(a) => mount::run(g, a),
        Command::Serve(a) => serve::run(g, a),
        Command::Deliver(a) => admin::deliver(g, a),
        Command::Gc(a) => admin::gc(g, a),
        Command::SshdConfig(a) => sshd::run(g, a),
        Command::Audit(a) => audit::run(g, a),
        Command::Decode(a) => decode::run(&a),
        Command::Doctor(a) => doctor::run(g, a),
        Command::Alerts(c) => alerts::run(g, c),
    }
}

/// Prints `value` as pretty JSON on stdout.
pub(crate) fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}
