//! `as2box user`

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Subcommand;
use zeroize::Zeroizing;

use super::{print_json, Global};
use crate::sftp::{self, KeyType};
use crate::store::{Store, User};
use crate::sysaccount;

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a mailbox user and the system account that backs it.
    #[command(
        after_help = "Example:\n  as2box user add acme --quota 10737418240\n\nNames: latin letters, digits, '-' and '_', not starting with '-', at most 32.\nThe system account gets no shell and no home and joins the SFTP group."
    )]
    Add {
        /// User name (also the system account's name).
        name: String,
        /// Most bytes the user may store in all mailboxes together.
        #[arg(long)]
        quota: Option<u64>,
        #[command(flatten)]
        key: KeyArgs,
    },
    /// The user's SSH keys: add, list, remove (several keys per user are allowed).
    #[command(subcommand)]
    Key(KeyCommand),
    /// New key pair, every file in the user's mailboxes removed, old keys refused and live
    /// sessions ended.
    #[command(
        after_help = "Example:\n  as2box user reset acme --private-key-out acme-new.key --passphrase-file pass.txt"
    )]
    Reset {
        /// User name.
        name: String,
        #[command(flatten)]
        key: KeyArgs,
    },
    /// New key pair (or the partner's new public key); files kept; old keys refused and
    /// live sessions ended.
    #[command(
        after_help = "Example:\n  as2box user rekey acme --private-key-out acme-2.key --passphrase-file pass.txt\n  as2box user rekey acme --public-key partner-new.pub"
    )]
    Rekey {
        /// User name.
        name: String,
        #[command(flatten)]
        key: KeyArgs,
    },
    /// List users.
    #[command(after_help = "Example:\n  as2box user list --json")]
    List {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Show one user with usage, keys and how to connect over SFTP.
    #[command(after_help = "Example:\n  as2box user show acme --host sftp.example.com")]
    Show {
        /// User name.
        name: String,
        /// Host name partners connect to (default: this machine's name).
        #[arg(long)]
        host: Option<String>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Change a user's settings.
    #[command(
        after_help = "Example:\n  as2box user set acme --quota 1073741824\n  as2box user set acme --no-quota"
    )]
    Set {
        /// User name.
        name: String,
        /// New quota in bytes.
        #[arg(long, conflicts_with = "no_quota")]
        quota: Option<u64>,
        /// Remove the quota.
        #[arg(long)]
        no_quota: bool,
    },
    /// Remove a user, their mailboxes and their system account.
    #[command(after_help = "Example:\n  as2box user remove acme --force")]
    Remove {
        /// User name.
        name: String,
        /// Also when files remain in the mailboxes (they are deleted).
        #[arg(long)]
        force: bool,
    },
}

/// How a user gets a key: generated (private key written once, encrypted) or brought.
#[derive(Debug, Clone, clap::Args)]
pub struct KeyArgs {
    /// Use the partner's own public key (OpenSSH `.pub` line) instead of generating a pair.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["private_key_out", "passphrase_file"])]
    public_key: Option<PathBuf>,
    /// Generate a key pair and write the private key (OpenSSH format, encrypted with the
    /// passphrase) to this new file; only the public key is kept.
    #[arg(long, value_name = "FILE")]
    private_key_out: Option<PathBuf>,
    /// File whose first line is the passphrase (default: asked on the terminal).
    #[arg(long, value_name = "FILE")]
    passphrase_file: Option<PathBuf>,
    /// Type of a generated key: ed25519 (every current client) or rsa (3072 bits, old clients).
    #[arg(long, value_enum, default_value = "ed25519")]
    key_type: KeyType,
}

impl KeyArgs {
    fn given(&self) -> bool {
        self.public_key.is_some() || self.private_key_out.is_some()
    }
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Add a public key (a partner's own key; OpenSSH `.pub` format, or `-` for stdin).
    #[command(after_help = "Example:\n  as2box user key add acme partner.pub")]
    Add {
        /// User name.
        name: String,
        /// The public key file.
        file: PathBuf,
    },
    /// List a user's keys with their ids and fingerprints.
    #[command(after_help = "Example:\n  as2box user key list acme --json")]
    List {
        /// User name.
        name: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Remove one key (by id or SHA256 fingerprint, as `user key list` shows them).
    #[command(
        after_help = "Example:\n  as2box user key remove acme 3\n  as2box user key remove acme SHA256:2yQ..."
    )]
    Remove {
        /// User name.
        name: String,
        /// Key id or fingerprint.
        key: String,
    },
}

#[derive(serde::Serialize)]
struct KeyView {
    id: i64,
    #[serde(rename = "type")]
    kind: String,
    fingerprint: String,
    public_key: String,
    created_ms: i64,
}

fn key_views(store: &Store, user: &User) -> anyhow::Result<Vec<KeyView>> {
    Ok(store
        .user_keys(user.id)?
        .into_iter()
        .map(|k| {
            let (fingerprint, kind) = sftp::describe(&k.public_key);
            KeyView {
                id: k.id,
                kind,
                fingerprint,
                public_key: k.public_key,
                created_ms: k.created_ms,
            }
        })
        .collect())
}

/// Reads the passphrase: the first line of `file`, or twice from the terminal.
fn passphrase(file: Option<&Path>) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    if let Some(f) = file {
        let text = Zeroizing::new(
            std::fs::read(f).with_context(|| format!("reading passphrase file {}", f.display()))?,
        );
        let line = text.split(|&b| b == b'\n').next().unwrap_or(&[]);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        return Ok(Zeroizing::new(line.to_vec()));
    }
    let first = read_tty("Passphrase for the new private key: ")?;
    let second = read_tty("Same passphrase again: ")?;
    if *first != *second {
        bail!("the passphrases differ");
    }
    Ok(first)
}

/// Reads a line from the controlling terminal without echo.
fn read_tty(prompt: &str) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    use std::io::{BufRead, Write};
    use std::os::fd::AsRawFd;
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .context("no terminal to ask the passphrase on: give --passphrase-file FILE")?;
    let fd = tty.as_raw_fd();
    // SAFETY: termios calls on an open terminal fd with a zeroed, then filled, struct.
    let old = unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(fd, &mut t) != 0 {
            bail!("cannot read the terminal settings: give --passphrase-file FILE");
        }
        let old = t;
        t.c_lflag &= !libc::ECHO;
        t.c_lflag |= libc::ECHONL;
        libc::tcsetattr(fd, libc::TCSANOW, &t);
        old
    };
    let mut w = &tty;
    let _ = w.write_all(prompt.as_bytes());
    let mut line = Zeroizing::new(Vec::new());
    let r = std::io::BufReader::new(&tty).read_until(b'\n', &mut line);
    // SAFETY: restores the settings read above.
    unsafe { libc::tcsetattr(fd, libc::TCSANOW, &old) };
    r.context("reading the passphrase")?;
    while matches!(line.last(), Some(b'\n' | b'\r')) {
        line.pop();
    }
    Ok(line)
}

/// The public key line and fingerprint that `args` ask for, writing a generated private
/// key to its file first. `None` when no key option was given.
fn obtain_key(name: &str, args: &KeyArgs) -> anyhow::Result<Option<sftp::CheckedKey>> {
    if let Some(f) = &args.public_key {
        let text = read_key_file(f)?;
        return Ok(Some(sftp::check_public_key(&text)?));
    }
    let Some(out) = &args.private_key_out else {
        if args.passphrase_file.is_some() {
            bail!("--passphrase-file needs --private-key-out FILE (where the generated private key goes)");
        }
        return Ok(None);
    };
    if out.exists() {
        bail!(
            "{} exists already: the private key is written to a new file only",
            out.display()
        );
    }
    let pass = passphrase(args.passphrase_file.as_deref())?;
    let host = hostname();
    let g = sftp::generate(args.key_type, &pass, &format!("{name}@{host} as2box"))?;
    sftp::write_secret_file(out, &g.private_openssh)?;
    println!(
        "private key written to {} (encrypted with the passphrase; give it to the user, it is not kept)",
        out.display()
    );
    Ok(Some(sftp::CheckedKey {
        line: g.public_line,
        fingerprint: g.fingerprint,
    }))
}

fn read_key_file(f: &Path) -> anyhow::Result<String> {
    if f.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)?;
        return Ok(s);
    }
    std::fs::read_to_string(f).with_context(|| format!("reading public key {}", f.display()))
}

/// This machine's host name.
pub(crate) fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) };
    if rc != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Replaces the user's keys (reset and rekey) and ends their live sessions.
fn replace_key(store: &Store, user: &User, key: &KeyArgs) -> anyhow::Result<()> {
    if !key.given() {
        bail!("give --private-key-out FILE (a new key pair is generated) or --public-key FILE");
    }
    let k = obtain_key(&user.name, key)?.context("no key")?;
    store.replace_public_keys(user.id, &k.line)?;
    let ended = sftp::end_sessions(user.uid);
    wait_sessions_gone(user.uid);
    println!(
        "user {}: old keys refused; new key {}; {} session process(es) ended",
        user.name, k.fingerprint, ended
    );
    Ok(())
}

/// Waits (up to 5 s) until no process runs as `uid` any more.
fn wait_sessions_gone(uid: u32) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::time::Instant::now() < deadline && sftp::end_sessions(uid) > 0 {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The user called `name`, or a clear error.
pub(crate) fn find(store: &Store, name: &str) -> anyhow::Result<User> {
    store
        .user(name)?
        .with_context(|| format!("no user {name:?} (see `as2box user list`)"))
}

#[derive(serde::Serialize)]
struct UserView {
    #[serde(flatten)]
    user: User,
    used_bytes: u64,
    files: u64,
    stations: Vec<String>,
}

fn view(store: &Store, user: User) -> anyhow::Result<UserView> {
    Ok(UserView {
        used_bytes: store.usage(user.id)?,
        files: store.file_count(user.id)?,
        stations: store
            .stations(Some(user.id))?
            .into_iter()
            .map(|s| s.as2_id)
            .collect(),
        user,
    })
}

pub fn run(g: &Global, c: UserCommand) -> anyhow::Result<()> {
    match c {
        UserCommand::Add { name, quota, key } => {
            crate::names::check_user_name(&name)?;
            let config = g.load_config()?;
            let store = g.open_store()?;
            if store.user(&name)?.is_some() {
                bail!("user {name:?} already exists");
            }
            if let Some(out) = &key.private_key_out {
                if out.exists() {
                    bail!(
                        "{} exists already: the private key is written to a new file only",
                        out.display()
                    );
                }
            }
            // Check the account name before writing any key file.
            sysaccount::check_free(&name)?;
            let k = obtain_key(&name, &key)?;
            let account = sysaccount::ensure(&name, &config.sftp.group)?;
            let user = store.add_user(&name, account.uid, account.gid, quota)?;
            println!(
                "added user {} (system account uid {} gid {})",
                user.name, user.uid, user.gid
            );
            match k {
                Some(k) => {
                    store.add_public_key(user.id, &k.line)?;
                    println!("key {} added", k.fingerprint);
                }
                None => println!(
                    "no key yet: the user cannot log in until `as2box user key add {name} FILE`"
                ),
            }
            Ok(())
        }
        UserCommand::Key(c) => run_key(g, c),
        UserCommand::Reset { name, key } => {
            let store = g.open_store()?;
            let user = find(&store, &name)?;
            replace_key(&store, &user, &key)?;
            let files = store.clear_user_files(user.id)?;
            println!("user {name}: {files} file(s) removed from the mailboxes");
            Ok(())
        }
        UserCommand::Rekey { name, key } => {
            let store = g.open_store()?;
            let user = find(&store, &name)?;
            replace_key(&store, &user, &key)
        }
        UserCommand::List { json } => {
            let store = g.open_store()?;
            let views = store
                .users()?
                .into_iter()
                .map(|u| view(&store, u))
                .collect::<anyhow::Result<Vec<_>>>()?;
            if json {
                return print_json(&views);
            }
            println!(
                "{:<20} {:>7} {:>14} {:>14}  STATIONS",
                "NAME", "UID", "USED", "QUOTA"
            );
            for v in views {
                println!(
                    "{:<20} {:>7} {:>14} {:>14}  {}",
                    v.user.name,
                    v.user.uid,
                    v.used_bytes,
                    v.user
                        .quota
                        .map(|q| q.to_string())
                        .unwrap_or_else(|| "-".into()),
                    v.stations.join(", ")
                );
            }
            Ok(())
        }
        UserCommand::Show { name, host, json } => {
            let config = g.load_config()?;
            let store = g.open_store()?;
            let v = view(&store, find(&store, &name)?)?;
            let keys = key_views(&store, &v.user)?;
            let host = host.unwrap_or_else(hostname);
            let port = config.sftp.port;
            let example =
                format!("sftp -o Port={port} -o IdentityFile=PRIVATE_KEY_FILE {name}@{host}");
            if json {
                #[derive(serde::Serialize)]
                struct ShowView<'a> {
                    #[serde(flatten)]
                    user: &'a UserView,
                    keys: &'a [KeyView],
                    sftp: serde_json::Value,
                }
                return print_json(&ShowView {
                    user: &v,
                    keys: &keys,
                    sftp: serde_json::json!({
                        "host": host, "port": port, "user": name,
                        "start_dir": sftp::START_DIR, "example": example,
                    }),
                });
            }
            println!("user:      {}", v.user.name);
            println!("account:   uid {} gid {}", v.user.uid, v.user.gid);
            println!(
                "quota:     {}",
                v.user
                    .quota
                    .map(|q| format!("{q} bytes"))
                    .unwrap_or_else(|| "none".into())
            );
            println!("used:      {} bytes in {} file(s)", v.used_bytes, v.files);
            println!("stations:  {}", v.stations.join(", "));
            println!();
            println!(
                "SFTP:      host {host}, port {port}, user {name}, starts in {}",
                sftp::START_DIR
            );
            if keys.is_empty() {
                println!("keys:      none (add one: as2box user key add {name} FILE)");
            }
            for k in &keys {
                println!("key {:>4}:  {} {}", k.id, k.kind, k.fingerprint);
            }
            println!("connect:   {example}");
            Ok(())
        }
        UserCommand::Set {
            name,
            quota,
            no_quota,
        } => {
            let store = g.open_store()?;
            let user = find(&store, &name)?;
            if quota.is_none() && !no_quota {
                bail!("nothing to change: give --quota BYTES or --no-quota");
            }
            store.set_quota(user.id, quota)?;
            println!(
                "user {name}: quota {}",
                quota
                    .map(|q| q.to_string())
                    .unwrap_or_else(|| "none".into())
            );
            Ok(())
        }
        UserCommand::Remove { name, force } => {
            let store = g.open_store()?;
            let user = find(&store, &name)?;
            store.remove_user(user.id, force)?;
            // userdel refuses an account with running processes: end its sessions first.
            sftp::end_sessions(user.uid);
            wait_sessions_gone(user.uid);
            sysaccount::remove(&name)?;
            println!("removed user {name}");
            Ok(())
        }
    }
}

fn run_key(g: &Global, c: KeyCommand) -> anyhow::Result<()> {
    match c {
        KeyCommand::Add { name, file } => {
            let store = g.open_store()?;
            let user = find(&store, &name)?;
            let k = sftp::check_public_key(&read_key_file(&file)?)?;
            let id = store.add_public_key(user.id, &k.line)?;
            println!("user {name}: key {id} added ({})", k.fingerprint);
            Ok(())
        }
        KeyCommand::List { name, json } => {
            let store = g.open_store()?;
            let user = find(&store, &name)?;
            let keys = key_views(&store, &user)?;
            if json {
                return print_json(&keys);
            }
            println!("{:>4}  {:<20} FINGERPRINT", "ID", "TYPE");
            for k in keys {
                println!("{:>4}  {:<20} {}", k.id, k.kind, k.fingerprint);
            }
            Ok(())
        }
        KeyCommand::Remove { name, key } => {
            let store = g.open_store()?;
            let user = find(&store, &name)?;
            let keys = key_views(&store, &user)?;
            let k = keys
                .iter()
                .find(|k| k.id.to_string() == key || k.fingerprint == key)
                .with_context(|| {
                    format!("user {name} has no key {key:?} (see `as2box user key list {name}`)")
                })?;
            store.remove_public_key(user.id, k.id)?;
            println!("user {name}: key {} removed ({})", k.id, k.fingerprint);
            Ok(())
        }
    }
}
