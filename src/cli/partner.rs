//! `as2box partner`

use anyhow::Context;
use clap::Subcommand;

use super::{print_json, user::find, Global};
use crate::keys;
use crate::store::{
    As2Version, BasicCredentials, CompressOption, EncryptOption, InboundCredentials, MdnOption,
    MicalgSpelling, Partner, SignOption, Store,
};

fn parse_yes_no(s: &str) -> Result<bool, String> {
    match s {
        "yes" | "true" | "on" => Ok(true),
        "no" | "false" | "off" => Ok(false),
        _ => Err(format!("{s:?}: use yes or no")),
    }
}

/// `type/subtype` made of RFC 2045 token characters, lowercased.
fn parse_content_type(s: &str) -> Result<String, String> {
    let token = |t: &str| {
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    match s.split_once('/') {
        Some((t, sub)) if token(t) && token(sub) => Ok(s.to_ascii_lowercase()),
        _ => Err(format!(
            "{s:?} is not a MIME type: use type/subtype, e.g. application/edi-x12"
        )),
    }
}

/// `--header 'Name: value'`, checked as the AS2 core checks it before sending; `none`.
fn parse_extra_header(s: &str) -> Result<(String, String), String> {
    if s == "none" {
        return Ok((String::new(), String::new()));
    }
    let (name, value) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?}: give the header as 'Name: value'"))?;
    let (name, value) = (name.trim(), value.trim());
    crate::as2::message::check_extra_header(name, value).map_err(|e| e.to_string())?;
    Ok((name.to_owned(), value.to_owned()))
}

/// The first line of a password file, which must not be empty.
fn read_password(file: &std::path::Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("reading the password file {}", file.display()))?;
    let password = text.lines().next().unwrap_or("").to_owned();
    anyhow::ensure!(
        !password.is_empty(),
        "the password file {} is empty: put the password on its first line",
        file.display()
    );
    Ok(password)
}

/// A Basic user name: no colon (RFC 7617), printable.
fn check_basic_user(user: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        !user.is_empty() && !user.contains(':') && !user.chars().any(char::is_control),
        "{user:?} cannot be an HTTP Basic user name (no colon, no control characters)"
    );
    Ok(())
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn print_profile(p: &Partner) {
    let path = |p: &Option<std::path::PathBuf>| {
        p.as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "-".into())
    };
    println!(
        "partner:     {}{}",
        p.as2_id,
        if p.test { " (test)" } else { "" }
    );
    println!("url:         {}", p.url.as_deref().unwrap_or("-"));
    if p.profile.cert_paths.is_empty() {
        println!("certificates: none");
    }
    for c in &p.profile.cert_paths {
        println!("certificate: {}  {}", c.display(), cert_summary(c));
    }
    println!("trust:       {}", path(&p.profile.trust_path));
    println!(
        "sign {}, encrypt {}, compress {}, mdn {} ({})",
        p.profile.sign.as_str(),
        p.profile.encrypt.as_str(),
        p.profile.compress.as_str(),
        p.profile.mdn.as_str(),
        if p.profile.mdn_signed {
            "signed"
        } else {
            "unsigned"
        }
    );
    println!("content type: {}", p.profile.content_type);
    let inbound = p.profile.inbound;
    println!(
        "inbound:     signature required: {}, encryption required: {}",
        yes_no(inbound.require_signature),
        yes_no(inbound.require_encryption)
    );
    if !inbound.require_signature || !inbound.require_encryption {
        println!("WARNING:     inbound security turned off for this partner: anyone who knows the two AS2 ids can send what it does not require");
    }
    println!(
        "wire:        AS2 {}, micalg spelled {}, binary canonicalization {}, chunked {}",
        p.profile.as2_version,
        p.profile.micalg_spelling,
        yes_no(p.profile.binary_canonicalization),
        yes_no(p.profile.chunked)
    );
    println!(
        "subject:     {}",
        p.profile
            .subject_template
            .as_deref()
            .unwrap_or("AS2 message from {station} (default)")
    );
    for (name, value) in &p.profile.extra_headers {
        println!("header:      {name}: {value}");
    }
    match &p.profile.basic_auth_out {
        Some(c) => println!("basic auth out: user {:?}, password set", c.user),
        None => println!("basic auth out: none"),
    }
    match &p.profile.tls_client {
        Some(t) => println!(
            "tls client:  {} (key {})",
            t.cert_path.display(),
            t.key_path.display()
        ),
        None => println!("tls client:  none"),
    }
    match &p.profile.basic_auth_in {
        Some(c) => println!("basic auth in:  user {:?} required", c.user),
        None => println!("basic auth in:  not required"),
    }
    if !p.profile.mdn_url_allow.is_empty() {
        println!("async MDNs also to: {}", p.profile.mdn_url_allow.join(", "));
    }
    if let Some(w) = keys::partner_expiry_warning(&p.profile.cert_paths) {
        println!("WARNING:     {w}");
    }
}

/// `valid 2026-01-01 .. 2029-01-01 (CN=...)`, or why the file cannot be read.
fn cert_summary(path: &std::path::Path) -> String {
    match keys::read_cert(path) {
        Ok(c) => format!(
            "valid {} .. {}  {}",
            c.not_before(),
            c.not_after(),
            crate::as2::certs::subject_of(&c)
        ),
        Err(e) => format!("UNREADABLE: {e}"),
    }
}

/// `--mdn-url-allow`: an http(s) URL prefix, or `none`.
fn parse_mdn_url(s: &str) -> Result<String, String> {
    if s == "none" {
        return Ok(s.into());
    }
    let ok = (s.starts_with("http://") || s.starts_with("https://"))
        && s.parse::<hyper::Uri>()
            .map(|u| u.host().is_some())
            .unwrap_or(false);
    if ok {
        Ok(s.into())
    } else {
        Err(format!(
            "{s:?} is not an http:// or https:// URL with a host (or `none` to clear the list)"
        ))
    }
}

/// Which partner: its owner, AS2 id and whether it is the test partner.
#[derive(Debug, clap::Args)]
pub struct PartnerRef {
    /// Owner.
    #[arg(long)]
    user: String,
    /// The partner's AS2 id.
    id: String,
    /// The test partner.
    #[arg(long)]
    test: bool,
}

#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Add a certificate of the partner (for a rollover: the old one stays until removed).
    #[command(
        after_help = "Example:\n  as2box partner cert add --user acme BIGCORP bigcorp-2027.pem\n\nThe partner's signatures verify against any of its certificates that is valid now;\nwhat we send is encrypted to the newest valid one."
    )]
    Add {
        #[command(flatten)]
        partner: PartnerRef,
        /// The certificate file (PEM or DER).
        file: std::path::PathBuf,
    },
    /// List the partner's certificates with their validity.
    #[command(after_help = "Example:\n  as2box partner cert list --user acme BIGCORP")]
    List {
        #[command(flatten)]
        partner: PartnerRef,
    },
    /// Remove one of the partner's certificates (by file, as listed).
    #[command(
        after_help = "Example:\n  as2box partner cert remove --user acme BIGCORP /etc/as2box/bigcorp-2024.pem"
    )]
    Remove {
        #[command(flatten)]
        partner: PartnerRef,
        /// The certificate file, as `partner cert list` shows it.
        file: std::path::PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum PartnerCommand {
    /// Add a trading partner to a user.
    #[command(
        after_help = "Example:\n  as2box partner add --user acme BIGCORP --url https://as2.bigcorp.example/as2\n  as2box partner add --user acme BIGCORP --test --url https://test.bigcorp.example/as2\n\nEvery station of the user gets a folder for the partner; a test partner's boxes are\nunder <partner>/test/."
    )]
    Add {
        #[command(flatten)]
        partner: PartnerRef,
        /// The partner's AS2 URL.
        #[arg(long)]
        url: Option<String>,
    },
    /// List partners.
    #[command(after_help = "Example:\n  as2box partner list --user acme --json")]
    List {
        /// Only this user's.
        #[arg(long)]
        user: Option<String>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Show one partner.
    #[command(after_help = "Example:\n  as2box partner show --user acme BIGCORP")]
    Show {
        #[command(flatten)]
        partner: PartnerRef,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Change a partner: URL, certificate and how messages are exchanged.
    #[command(
        after_help = "Example:\n  as2box partner set --user acme BIGCORP --url https://as2.bigcorp.example/as2 \\\n      --cert bigcorp.pem --sign sha256 --encrypt aes256-cbc --mdn sync --mdn-signed yes\n\nDefaults for a new partner: --sign sha256 --encrypt aes256-cbc --compress none --mdn sync --mdn-signed yes\n--require-signature yes --require-encryption yes."
    )]
    Set {
        #[command(flatten)]
        partner: PartnerRef,
        /// The partner's AS2 URL (http:// or https://).
        #[arg(long)]
        url: Option<String>,
        /// The partner's certificate (PEM or DER); replaces the ones it has (see `partner
        /// cert` to keep several during a rollover).
        #[arg(long)]
        cert: Option<std::path::PathBuf>,
        /// Refuse messages from the partner that are not signed with one of its
        /// certificates (default yes; `no` only for a partner that trades unsigned AS2).
        #[arg(long, value_parser = parse_yes_no)]
        require_signature: Option<bool>,
        /// Refuse messages from the partner that are not encrypted to our station
        /// (default yes; `no` only for a partner that trades unencrypted AS2).
        #[arg(long, value_parser = parse_yes_no)]
        require_encryption: Option<bool>,
        /// Where else (a URL prefix) the async MDNs we owe the partner may be POSTed,
        /// besides the scheme and host of its own URL; repeat for several; replaces the
        /// list (`none` clears it). Loopback and private addresses are reached only
        /// through an entry here.
        #[arg(long, value_parser = parse_mdn_url)]
        mdn_url_allow: Vec<String>,
        /// A CA or certificate to trust for the partner's HTTPS server (besides the system's).
        #[arg(long)]
        trust_ca: Option<std::path::PathBuf>,
        /// Signature digest of what we send.
        #[arg(long, value_enum)]
        sign: Option<SignOption>,
        /// Encryption of what we send.
        #[arg(long, value_enum)]
        encrypt: Option<EncryptOption>,
        /// Compression of what we send.
        #[arg(long, value_enum)]
        compress: Option<CompressOption>,
        /// Receipt to ask for.
        #[arg(long, value_enum)]
        mdn: Option<MdnOption>,
        /// Ask for a signed receipt.
        #[arg(long, value_parser = parse_yes_no)]
        mdn_signed: Option<bool>,
        /// MIME type our files are sent as (default application/octet-stream: the bytes
        /// arrive exactly as uploaded). Text types (text/*, application/edi-x12,
        /// application/edifact, application/edi-consent, application/xml) are sent in MIME
        /// canonical form: bare LF line ends become CRLF (RFC 5751).
        #[arg(long, value_parser = parse_content_type)]
        content_type: Option<String>,
        /// Sign what we send exactly as uploaded, text types too (no CRLF conversion; the
        /// `openssl cms -binary` equivalent). IBM Sterling B2B Integrator expects it.
        #[arg(long, value_parser = parse_yes_no)]
        binary_canonicalization: Option<bool>,
        /// How the MIC algorithm we ask for is spelled in Disposition-Notification-Options:
        /// `sha-256` (RFC 5751, the default) or `sha256`.
        #[arg(long, value_enum)]
        micalg_spelling: Option<MicalgSpelling>,
        /// Send with `Transfer-Encoding: chunked` (yes) or with a `Content-Length` (no, the
        /// default; some older receivers cannot take chunked requests).
        #[arg(long, value_parser = parse_yes_no)]
        chunked: Option<bool>,
        /// An extra HTTP header on what we send, `Name: value`; repeat for several;
        /// replaces the list (`none` clears it). AS2 and HTTP framing fields (AS2-From,
        /// Message-ID, Content-Type, Content-Length, ...) cannot be set.
        #[arg(long = "header", value_parser = parse_extra_header)]
        headers: Vec<(String, String)>,
        /// The Subject of what we send; `{station}`, `{partner}` and `{name}` (the file or
        /// folder name) are filled in. `default` restores `AS2 message from {station}`.
        #[arg(long)]
        subject: Option<String>,
        /// The AS2-Version spoken with the partner: 1.2 (default) or 1.3 (also sends
        /// AS2-Product, and refuses SHA-1, 3DES and RC2 both ways).
        #[arg(long, value_enum)]
        as2_version: Option<As2Version>,
        /// HTTP Basic user name we send to the partner's URL (with
        /// --basic-auth-password-file); `none` stops sending credentials.
        #[arg(long)]
        basic_auth_user: Option<String>,
        /// A file whose first line is the password for --basic-auth-user (kept in the
        /// configuration database, which SFTP users cannot read; never shown).
        #[arg(long)]
        basic_auth_password_file: Option<std::path::PathBuf>,
        /// HTTP Basic user name the partner must send to us (with
        /// --inbound-basic-auth-password-file); without it a request gets HTTP 401 and is
        /// not looked at. `none` stops requiring credentials.
        #[arg(long)]
        inbound_basic_auth_user: Option<String>,
        /// A file whose first line is the password the partner must send (only a salted
        /// hash of it is kept).
        #[arg(long)]
        inbound_basic_auth_password_file: Option<std::path::PathBuf>,
        /// A TLS client certificate (PEM) to present to the partner's HTTPS server, with
        /// --tls-client-key; `none` stops presenting one.
        #[arg(long)]
        tls_client_cert: Option<std::path::PathBuf>,
        /// The private key (PEM) of --tls-client-cert.
        #[arg(long)]
        tls_client_key: Option<std::path::PathBuf>,
    },
    /// The partner's certificates: add, list, remove (several during a rollover).
    #[command(subcommand)]
    Cert(CertCommand),
    /// Remove a partner and its mailboxes.
    #[command(after_help = "Example:\n  as2box partner remove --user acme BIGCORP --force")]
    Remove {
        #[command(flatten)]
        partner: PartnerRef,
        /// Also when its mailboxes hold files (they are deleted).
        #[arg(long)]
        force: bool,
    },
}

fn get(store: &Store, user: &str, id: &str, test: bool) -> anyhow::Result<Partner> {
    let u = find(store, user)?;
    store.partner(u.id, id, test)?.with_context(|| {
        format!(
            "user {user:?} has no {}partner {id:?} (see `as2box partner list --user {user}`)",
            if test { "test " } else { "" }
        )
    })
}

#[derive(serde::Serialize)]
struct PartnerView {
    #[serde(flatten)]
    partner: Partner,
    user: String,
    /// Set when the certificate is unreadable or expires within 30 days.
    warning: Option<String>,
}

pub fn run(g: &Global, c: PartnerCommand) -> anyhow::Result<()> {
    let store = g.open_store()?;
    match c {
        PartnerCommand::Add {
            partner: PartnerRef { user, id, test },
            url,
        } => {
            crate::names::check_as2_id(&id)?;
            let u = find(&store, &user)?;
            let p = store.add_partner(u.id, &id, test, url.as_deref())?;
            println!(
                "added {}partner {} for user {}",
                if p.test { "test " } else { "" },
                p.as2_id,
                u.name
            );
            println!(
                "note: what {id} sends must be signed and encrypted; until its certificate is added (`as2box partner cert add --user {user} {id}{} FILE`) every message from it is refused",
                if p.test { " --test" } else { "" }
            );
            Ok(())
        }
        PartnerCommand::List { user, json } => {
            let uid = user.map(|u| find(&store, &u)).transpose()?.map(|u| u.id);
            let mut list = Vec::new();
            for p in store.partners(uid)? {
                let user = store
                    .user_by_id(p.user_id)?
                    .map(|u| u.name)
                    .unwrap_or_default();
                let warning = keys::partner_expiry_warning(&p.profile.cert_paths);
                if let Some(w) = &warning {
                    tracing::warn!(partner = %p.as2_id, "{w}");
                }
                list.push(PartnerView {
                    partner: p,
                    user,
                    warning,
                });
            }
            if json {
                return print_json(&list);
            }
            println!("{:<24} {:<5} {:<16} URL", "PARTNER", "TEST", "USER");
            for v in list {
                println!(
                    "{:<24} {:<5} {:<16} {}{}",
                    v.partner.as2_id,
                    if v.partner.test { "yes" } else { "no" },
                    v.user,
                    v.partner.url.as_deref().unwrap_or("-"),
                    v.warning
                        .as_ref()
                        .map(|w| format!("  WARNING: {w}"))
                        .unwrap_or_default()
                );
            }
            Ok(())
        }
        PartnerCommand::Show {
            partner: PartnerRef { user, id, test },
            json,
        } => {
            let p = get(&store, &user, &id, test)?;
            if json {
                let warning = keys::partner_expiry_warning(&p.profile.cert_paths);
                return print_json(&PartnerView {
                    partner: p,
                    user,
                    warning,
                });
            }
            println!("user:        {user}");
            print_profile(&p);
            Ok(())
        }
        PartnerCommand::Set {
            partner: PartnerRef { user, id, test },
            url,
            cert,
            trust_ca,
            sign,
            encrypt,
            compress,
            mdn,
            mdn_signed,
            content_type,
            require_signature,
            require_encryption,
            mdn_url_allow,
            binary_canonicalization,
            micalg_spelling,
            chunked,
            headers,
            subject,
            as2_version,
            basic_auth_user,
            basic_auth_password_file,
            inbound_basic_auth_user,
            inbound_basic_auth_password_file,
            tls_client_cert,
            tls_client_key,
        } => {
            let p = get(&store, &user, &id, test)?;
            if let Some(url) = &url {
                anyhow::ensure!(
                    url.starts_with("http://") || url.starts_with("https://"),
                    "--url {url:?} must start with http:// or https://"
                );
                store.set_partner_url(p.id, Some(url))?;
            }
            let mut profile = p.profile.clone();
            if let Some(cert) = cert {
                profile.cert_paths = vec![checked_cert(&cert)?];
            }
            if let Some(ca) = trust_ca {
                let ca = std::path::absolute(ca)?;
                keys::read_cert(&ca)?;
                profile.trust_path = Some(ca);
            }
            profile.sign = sign.unwrap_or(profile.sign);
            profile.encrypt = encrypt.unwrap_or(profile.encrypt);
            profile.compress = compress.unwrap_or(profile.compress);
            profile.mdn = mdn.unwrap_or(profile.mdn);
            profile.mdn_signed = mdn_signed.unwrap_or(profile.mdn_signed);
            if let Some(t) = content_type {
                profile.content_type = t;
            }
            profile.inbound.require_signature =
                require_signature.unwrap_or(profile.inbound.require_signature);
            profile.inbound.require_encryption =
                require_encryption.unwrap_or(profile.inbound.require_encryption);
            if !mdn_url_allow.is_empty() {
                profile.mdn_url_allow = mdn_url_allow.into_iter().filter(|u| u != "none").collect();
            }
            profile.binary_canonicalization =
                binary_canonicalization.unwrap_or(profile.binary_canonicalization);
            profile.micalg_spelling = micalg_spelling.unwrap_or(profile.micalg_spelling);
            profile.chunked = chunked.unwrap_or(profile.chunked);
            if !headers.is_empty() {
                profile.extra_headers =
                    headers.into_iter().filter(|(n, _)| !n.is_empty()).collect();
            }
            match subject.as_deref() {
                Some("default") => profile.subject_template = None,
                Some(t) => {
                    crate::as2::message::check_header_value("--subject", t)?;
                    profile.subject_template = Some(t.to_owned());
                }
                None => {}
            }
            profile.as2_version = as2_version.unwrap_or(profile.as2_version);
            match (basic_auth_user.as_deref(), basic_auth_password_file) {
                (Some("none"), _) => profile.basic_auth_out = None,
                (Some(user), Some(file)) => {
                    check_basic_user(user)?;
                    profile.basic_auth_out = Some(BasicCredentials {
                        user: user.to_owned(),
                        password: read_password(&file)?,
                    });
                }
                (None, None) => {}
                _ => anyhow::bail!(
                    "give --basic-auth-user and --basic-auth-password-file together (or --basic-auth-user none)"
                ),
            }
            match (inbound_basic_auth_user.as_deref(), inbound_basic_auth_password_file) {
                (Some("none"), _) => profile.basic_auth_in = None,
                (Some(user), Some(file)) => {
                    check_basic_user(user)?;
                    profile.basic_auth_in = Some(InboundCredentials {
                        user: user.to_owned(),
                        password_hash: crate::basic_auth::hash_password(&read_password(&file)?)?,
                    });
                }
                (None, None) => {}
                _ => anyhow::bail!(
                    "give --inbound-basic-auth-user and --inbound-basic-auth-password-file together (or --inbound-basic-auth-user none)"
                ),
            }
            match (tls_client_cert, tls_client_key) {
                (Some(cert), _) if cert.as_os_str() == "none" => profile.tls_client = None,
                (Some(cert), Some(key)) => {
                    let (cert, key) = (std::path::absolute(cert)?, std::path::absolute(key)?);
                    keys::check_pair(&key, &cert)?;
                    profile.tls_client = Some(crate::store::TlsClientIdentity {
                        cert_path: cert,
                        key_path: key,
                    });
                }
                (None, None) => {}
                _ => anyhow::bail!(
                    "give --tls-client-cert and --tls-client-key together (or --tls-client-cert none)"
                ),
            }
            if profile.cert_paths.is_empty() && profile.encrypt != EncryptOption::None {
                eprintln!("note: encrypting to the partner needs its certificate: add --cert FILE");
            }
            if profile.cert_paths.is_empty() && profile.inbound.require_signature {
                eprintln!("note: until the partner has a certificate, every message it sends is refused (its signature cannot be checked): add --cert FILE");
            }
            store.set_partner_profile(p.id, &profile)?;
            print_profile(&get(&store, &user, &id, test)?);
            Ok(())
        }
        PartnerCommand::Cert(c) => run_cert(&store, c),
        PartnerCommand::Remove {
            partner: PartnerRef { user, id, test },
            force,
        } => {
            let p = get(&store, &user, &id, test)?;
            store.remove_partner(p.id, force)?;
            println!("removed {}partner {id}", if test { "test " } else { "" });
            Ok(())
        }
    }
}

/// A certificate file given on the command line: absolute, readable, warned about when it
/// expires soon.
fn checked_cert(file: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    let cert = std::path::absolute(file)?;
    keys::read_cert(&cert)?;
    if let Some(w) = keys::expiry_warning(&cert) {
        eprintln!("warning: {w}");
    }
    Ok(cert)
}

fn run_cert(store: &Store, c: CertCommand) -> anyhow::Result<()> {
    match c {
        CertCommand::Add {
            partner: PartnerRef { user, id, test },
            file,
        } => {
            let p = get(store, &user, &id, test)?;
            let cert = checked_cert(&file)?;
            let mut profile = p.profile.clone();
            anyhow::ensure!(
                !profile.cert_paths.contains(&cert),
                "{} is already a certificate of partner {id}",
                cert.display()
            );
            profile.cert_paths.push(cert.clone());
            store.set_partner_profile(p.id, &profile)?;
            println!(
                "added certificate {} to partner {id}: {}",
                cert.display(),
                cert_summary(&cert)
            );
            Ok(())
        }
        CertCommand::List {
            partner: PartnerRef { user, id, test },
        } => {
            let p = get(store, &user, &id, test)?;
            if p.profile.cert_paths.is_empty() {
                println!(
                    "partner {id} has no certificate (add one with `as2box partner cert add`)"
                );
            }
            for c in &p.profile.cert_paths {
                println!("{}  {}", c.display(), cert_summary(c));
            }
            Ok(())
        }
        CertCommand::Remove {
            partner: PartnerRef { user, id, test },
            file,
        } => {
            let p = get(store, &user, &id, test)?;
            let target = std::path::absolute(&file)?;
            let mut profile = p.profile.clone();
            let before = profile.cert_paths.len();
            profile.cert_paths.retain(|c| c != &target && c != &file);
            anyhow::ensure!(
                profile.cert_paths.len() < before,
                "{} is not a certificate of partner {id} (see `as2box partner cert list --user {user} {id}`)",
                file.display()
            );
            store.set_partner_profile(p.id, &profile)?;
            println!("removed certificate {} from partner {id}", file.display());
            if profile.cert_paths.is_empty() && profile.inbound.require_signature {
                eprintln!("note: partner {id} has no certificate left: every message it sends is refused until one is added");
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_content_type;

    #[test]
    fn content_types_must_be_type_slash_subtype_tokens() {
        assert_eq!(
            parse_content_type("Application/EDI-X12").unwrap(),
            "application/edi-x12"
        );
        for bad in [
            "edi",
            "application/",
            "/x",
            "text/plain; charset=x",
            "a/b\r\nX: y",
        ] {
            assert!(parse_content_type(bad).is_err(), "{bad:?}");
        }
    }
}
