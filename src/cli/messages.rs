//! `as2box messages`

use clap::Subcommand;

use super::{print_json, Global};

#[derive(Debug, Subcommand)]
pub enum MessagesCommand {
    /// List messages, newest first.
    #[command(after_help = "Example:\n  as2box messages list --user acme --json")]
    List {
        /// Only this user's messages.
        #[arg(long)]
        user: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        /// JSON output (an array of objects).
        #[arg(long)]
        json: bool,
    },
    /// Show one message with its files and every state change.
    #[command(after_help = "Example:\n  as2box messages show 42 --json")]
    Show {
        /// Message id (from `messages list`).
        id: i64,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Send the files of a sent message again, as a new message with a new Message-ID.
    ///
    /// The daemon (`as2box serve`) picks it up within a second. Use it after a partner
    /// fixed their side of a failure; the original record stays as it was.
    #[command(after_help = "Example:\n  as2box messages resend 42")]
    Resend {
        /// Message id (from `messages list`) of a sent (direction `out`) message.
        id: i64,
    },
    /// Write a message's non-repudiation archive into a folder, for an auditor.
    ///
    /// Kept per message for retention.messages_days: received, the request as it came
    /// (still signed and encrypted) and the MDN we answered; sent, the request we POSTed
    /// and the MDN the partner returned. Written: each as `<kind>.raw` (the capture, as
    /// `as2box decode` reads it) and `<kind>.smime` (its body for `openssl cms -inform
    /// SMIME`); where we can open it, the decrypted entity and the signed part and its
    /// signature split apart (`<kind>-signed-content.mime`, `<kind>-signature.p7s`: OpenSSL's
    /// S/MIME reader rewrites line ends in binary parts); station.pem and partner.pem (the
    /// certificates), SHA256SUMS and
    /// manifest.json (hashes, which certificate signed and which verified, the MIC we
    /// computed against the MIC in the MDN, and the `openssl` commands that re-verify it
    /// all). The folder is made if missing and must be empty unless --force.
    #[command(
        after_help = "Example:\n  as2box messages export 42 /tmp/msg-42\n  cd /tmp/msg-42 && sha256sum -c SHA256SUMS && jq .verify manifest.json"
    )]
    Export(super::export::ExportArgs),
}

#[derive(serde::Serialize)]
struct MessageView {
    #[serde(flatten)]
    message: crate::store::Message,
    #[serde(flatten)]
    transmission: crate::store::Transmission,
    /// Whether the MIC in the MDN matches ours, in words.
    mic_check: Option<String>,
    events: Vec<crate::store::Event>,
}

/// A MIC as `(base64 value, algorithm)`: the value compared exactly (base64 is
/// case-sensitive), the algorithm without regard to case or dashes (`sha-256`, `SHA256`).
fn split_mic(v: &str) -> (String, String) {
    let (value, alg) = v.split_once(',').unwrap_or((v, ""));
    let alg: String = alg
        .trim()
        .chars()
        .filter(|c| *c != '-')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    (value.trim().to_owned(), alg)
}

/// The `Received-Content-MIC` in an MDN's text.
fn mdn_mic(mdn: &str) -> Option<(String, String)> {
    mdn.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("Received-Content-MIC")
            .then(|| split_mic(v))
    })
}

/// Compares the MIC an MDN carries with the one(s) computed for the message, in words.
fn mic_check(t: &crate::store::Transmission) -> Option<String> {
    let (value, alg) = mdn_mic(t.mdn.as_deref()?)?;
    let ours: Vec<(String, String)> = t
        .mic
        .as_deref()
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(split_mic)
        .collect();
    let show = |(v, a): &(String, String)| format!("{v}, {a}");
    let returned = show(&(value.clone(), alg.clone()));
    Some(if ours.contains(&(value, alg)) {
        format!("match ({returned})")
    } else if ours.is_empty() {
        format!("the MDN returned {returned}; no MIC was computed for this message")
    } else {
        let expected: Vec<String> = ours.iter().map(show).collect();
        format!(
            "MISMATCH: the MDN returned {returned}, expected {}",
            expected.join(" or ")
        )
    })
}

pub fn run(g: &Global, c: MessagesCommand) -> anyhow::Result<()> {
    let store = g.open_store()?;
    match c {
        MessagesCommand::Show { id, json } => {
            let message = store
                .message(id)?
                .ok_or_else(|| anyhow::anyhow!("no message {id} (see `as2box messages list`)"))?;
            let transmission = store.message_transmission(id)?.unwrap_or_default();
            let v = MessageView {
                events: store.message_events(id)?,
                mic_check: mic_check(&transmission),
                transmission,
                message,
            };
            if json {
                return print_json(&v);
            }
            let m = &v.message;
            println!(
                "message {} ({}) {} -> {}",
                m.id, m.direction, m.station, m.partner
            );
            println!(
                "user:    {}{}",
                m.user,
                if m.test { " (test partner)" } else { "" }
            );
            println!("name:    {}", m.name);
            println!(
                "state:   {}{}",
                m.state,
                m.detail
                    .as_ref()
                    .map(|d| format!(": {d}"))
                    .unwrap_or_default()
            );
            for f in &m.files {
                println!(
                    "file:    {} ({} bytes, sha256 {})",
                    f.name, f.size, f.sha256
                );
            }
            let t = &v.transmission;
            if let Some(mid) = &t.as2_message_id {
                println!("as2 id:  {mid}");
            }
            for mic in t.mic.iter().flat_map(|m| m.lines()) {
                println!("mic:     {mic}");
            }
            if let Some(check) = &v.mic_check {
                println!("mic check: {check}");
            }
            println!("history:");
            for e in &v.events {
                println!(
                    "  {}  {}{}",
                    e.at,
                    e.state,
                    e.detail
                        .as_ref()
                        .map(|d| format!(": {d}"))
                        .unwrap_or_default()
                );
            }
            if let Some(h) = &t.request_headers {
                println!("request headers:");
                for l in h.lines().filter(|l| !l.is_empty()) {
                    println!("  {l}");
                }
            }
            if let Some(mdn) = &t.mdn {
                println!("mdn:");
                for l in mdn.lines() {
                    println!("  {l}");
                }
            }
            Ok(())
        }
        MessagesCommand::Export(args) => super::export::run(&store, &args),
        MessagesCommand::Resend { id } => {
            let new = store.resend_message(id)?;
            store.ring_doorbell();
            println!(
                "queued as message {new}: `as2box serve` sends it now if it is running; follow it with `as2box messages show {new}`"
            );
            Ok(())
        }
        MessagesCommand::List { user, limit, json } => {
            let user_id = match user {
                Some(name) => Some(super::user::find(&store, &name)?.id),
                None => None,
            };
            let list = store.messages(user_id, limit)?;
            if json {
                return print_json(&list);
            }
            println!(
                "{:>6}  {:<3}  {:<12} {:<16} {:<16} {:<13} {:>5}  {:<24}  NAME",
                "ID", "DIR", "USER", "STATION", "PARTNER", "STATE", "FILES", "CREATED"
            );
            for m in list {
                let partner = if m.test {
                    format!("{} (test)", m.partner)
                } else {
                    m.partner.clone()
                };
                println!(
                    "{:>6}  {:<3}  {:<12} {:<16} {:<16} {:<13} {:>5}  {:<24}  {}",
                    m.id,
                    m.direction,
                    m.user,
                    m.station,
                    partner,
                    m.state,
                    m.files.len(),
                    m.created_at,
                    m.name
                );
                if let Some(d) = m.detail {
                    println!("        {d}");
                }
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Transmission;

    fn t(mic: &str, mdn: &str) -> Transmission {
        Transmission {
            mic: Some(mic.into()),
            mdn: Some(mdn.into()),
            ..Default::default()
        }
    }

    #[test]
    fn the_mic_check_compares_the_value_exactly_and_the_algorithm_without_case() {
        let mdn = "Content-Type: message/disposition-notification\r\nReceived-content-MIC: AbC=, SHA-256\r\n";
        assert_eq!(
            mic_check(&t("AbC=, sha-256\nXyz=, sha256", mdn)).unwrap(),
            "match (AbC=, sha256)"
        );
        assert!(mic_check(&t("abc=, sha-256", mdn))
            .unwrap()
            .starts_with("MISMATCH"));
        assert_eq!(mic_check(&t("AbC=, sha-256", "no mic here")), None);
        assert_eq!(mic_check(&Transmission::default()), None);
    }
}
