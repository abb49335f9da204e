//! `as2box messages export ID DIR`: a message's non-repudiation archive (the raw request
//! and MDN, `store::archive`) written out for an auditor, with the certificates and a
//! `manifest.json` (hashes, which certificate signed and which verified, the MIC we
//! computed against the MIC in the MDN), in a form the `openssl` CLI re-verifies on its
//! own: each S/MIME body also as an `.smime` file that `openssl cms -inform SMIME` reads.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use openssl::x509::X509;
use serde_json::{json, Value};

use crate::as2::certs::{load_certificates, name_line, subject_of, KeyPair, ValidityPolicy};
use crate::as2::mdn::{parse_mdn, MicCheck, ReceivedMdn};
use crate::as2::message::{parse_body, split_http_capture, ReceiveContext, RequestInfo};
use crate::as2::mic::Mic;
use crate::as2::Headers;
use crate::store::{ArchiveItem, ArchiveKind, Message, Partner, Station, Store};

/// Arguments of `as2box messages export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// Message id (from `messages list`).
    pub id: i64,
    /// The folder to write into; made if missing. Must be empty unless --force.
    pub dir: PathBuf,
    /// Write into a folder that is not empty, replacing files of the same names.
    #[arg(long)]
    pub force: bool,
}

/// What one exported file is, for the manifest.
struct Written {
    name: String,
    what: String,
    sha256: String,
    size: usize,
}

struct Out<'a> {
    dir: &'a Path,
    force: bool,
    files: Vec<Written>,
}

impl Out<'_> {
    fn write(&mut self, name: &str, what: &str, data: &[u8]) -> Result<()> {
        let path = self.dir.join(name);
        let mut options = std::fs::OpenOptions::new();
        options.write(true);
        if self.force {
            options.create(true).truncate(true);
        } else {
            options.create_new(true);
        }
        let mut f = options
            .open(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        f.write_all(data)
            .and_then(|()| f.sync_all())
            .with_context(|| format!("cannot write {}", path.display()))?;
        self.files.push(Written {
            name: name.into(),
            what: what.into(),
            sha256: crate::store::sha256_hex(data),
            size: data.len(),
        });
        Ok(())
    }
}

/// A certificate as an auditor identifies it.
fn cert_json(cert: &X509, file: &str) -> Value {
    let fingerprint = crate::as2::certs::sha256_fingerprint(cert);
    let issuer = name_line(cert.issuer_name());
    let serial = cert
        .serial_number()
        .to_bn()
        .and_then(|b| b.to_hex_str().map(|s| s.to_string()))
        .unwrap_or_default();
    json!({
        "file": file,
        "subject": subject_of(cert),
        "issuer": issuer,
        "serial": serial,
        "sha256_fingerprint": fingerprint,
        "not_before": cert.not_before().to_string(),
        "not_after": cert.not_after().to_string(),
    })
}

fn pem_of(certs: &[X509]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for c in certs {
        out.extend(c.to_pem().context("cannot write a certificate as PEM")?);
    }
    Ok(out)
}

/// The body of a capture as an S/MIME entity `openssl cms -inform SMIME` reads: AS2 sends
/// CMS bodies as binary, and OpenSSL's S/MIME reader wants them in base64.
fn smime_entity(headers: &Headers, body: &[u8]) -> Vec<u8> {
    let content_type = headers.get("content-type").unwrap_or("text/plain");
    let media = crate::as2::mime::Entity::from_parts(headers.clone(), &[]).media_type();
    let already_base64 = headers
        .get("content-transfer-encoding")
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("base64"));
    let mut out = format!("MIME-Version: 1.0\r\nContent-Type: {content_type}\r\n").into_bytes();
    if media.ends_with("pkcs7-mime") && !already_base64 {
        use base64::Engine;
        out.extend_from_slice(b"Content-Transfer-Encoding: base64\r\n\r\n");
        let encoded = base64::engine::general_purpose::STANDARD.encode(body);
        for line in encoded.as_bytes().chunks(64) {
            out.extend_from_slice(line);
            out.extend_from_slice(b"\r\n");
        }
    } else {
        if already_base64 {
            out.extend_from_slice(b"Content-Transfer-Encoding: base64\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(body);
    }
    out
}

/// The layers of a capture an auditor verifies piece by piece: the decrypted entity (when
/// `keys` open it), the signed MIME part exactly as signed and its detached signature (DER).
/// OpenSSL's S/MIME reader rewrites line ends inside a multipart, so a binary payload only
/// verifies given as `-content` with `-inform DER`.
struct Layers {
    decrypted: Option<Vec<u8>>,
    signed: Option<(Vec<u8>, Vec<u8>)>,
}

fn layers(headers: &Headers, body: &[u8], keys: &[KeyPair]) -> Layers {
    use crate::as2::mime::{split_multipart, Entity};
    let mut out = Layers {
        decrypted: None,
        signed: None,
    };
    let mut entity = Entity::from_parts(headers.clone(), body);
    let content_type = entity.content_type();
    let enveloped = entity.media_type().ends_with("pkcs7-mime")
        && content_type
            .param("smime-type")
            .is_some_and(|t| t.eq_ignore_ascii_case("enveloped-data"));
    if enveloped {
        let Ok(der) = entity.decoded_body() else {
            return out;
        };
        let Ok((plain, _, _)) = crate::as2::cms::decrypt(&der, keys) else {
            return out;
        };
        let Ok(inner) = Entity::parse(&plain) else {
            return out;
        };
        out.decrypted = Some(plain);
        entity = inner;
    }
    if entity.media_type() == "multipart/signed" {
        let boundary = entity.content_type().param("boundary").map(str::to_owned);
        let parts = boundary.and_then(|b| split_multipart(entity.body(), &b).ok());
        if let Some([content, signature, ..]) = parts.as_deref() {
            if let Ok(der) = Entity::parse(signature).and_then(|e| e.decoded_body()) {
                out.signed = Some((content.to_vec(), der));
            }
        }
    }
    out
}

/// The first of `certs` with which `check` succeeds, with its index; otherwise the outcome
/// with all of them (which says why none did).
fn first_verifying<T>(
    certs: &[X509],
    check: impl Fn(&[X509]) -> crate::as2::error::Result<T>,
) -> (Option<usize>, crate::as2::error::Result<T>) {
    for (i, c) in certs.iter().enumerate() {
        if let Ok(v) = check(std::slice::from_ref(c)) {
            return (Some(i), Ok(v));
        }
    }
    (None, check(certs))
}

fn at_time(item: &ArchiveItem) -> ValidityPolicy {
    ValidityPolicy::at(item.at_ms / 1000)
}

fn mdn_json(mdn: &ReceivedMdn) -> Value {
    json!({
        "original_message_id": mdn.original_message_id,
        "disposition": mdn.disposition.to_field(),
        "processed": mdn.disposition.is_processed(),
        "mic": mdn.mic.as_ref().map(Mic::to_header_value),
        "signed": mdn.signed,
    })
}

fn mic_json(computed: &[Mic], mdn: Option<&ReceivedMdn>) -> Value {
    let in_mdn = mdn.and_then(|m| m.mic.as_ref());
    let matches = match mdn.map(|m| m.check_mic(computed)) {
        Some(MicCheck::Match) => json!(true),
        Some(MicCheck::Mismatch) => json!(false),
        _ => Value::Null,
    };
    json!({
        "computed": computed.iter().map(Mic::to_header_value).collect::<Vec<_>>(),
        "in_mdn": in_mdn.map(Mic::to_header_value),
        "match": matches,
    })
}

fn station_key(station: &Station) -> Result<KeyPair> {
    let (Some(key), Some(cert)) = (&station.key_path, &station.cert_path) else {
        bail!("station {} has no key pair", station.as2_id);
    };
    let k = std::fs::read(key).with_context(|| format!("reading {}", key.display()))?;
    let c = std::fs::read(cert).with_context(|| format!("reading {}", cert.display()))?;
    KeyPair::from_separate(&k, &c, None)
        .with_context(|| format!("station {} key pair", station.as2_id))
}

fn partner_certs(partner: Option<&Partner>) -> Vec<X509> {
    partner
        .map(|p| {
            p.profile
                .cert_paths
                .iter()
                .filter_map(|path| std::fs::read(path).ok())
                .filter_map(|data| load_certificates(&data).ok())
                .flatten()
                .collect()
        })
        .unwrap_or_default()
}

/// Makes `dir` (or checks it is empty), unless `force`.
fn prepare_dir(dir: &Path, force: bool) -> Result<()> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() && !force {
                bail!(
                    "{} is not empty: choose a new folder, or pass --force to write into it (files of the same names are replaced)",
                    dir.display()
                );
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", dir.display())),
    }
}

/// Runs `as2box messages export`.
pub fn run(store: &Store, args: &ExportArgs) -> Result<()> {
    let message = store.message(args.id)?.ok_or_else(|| {
        anyhow::anyhow!(
            "no message {} (see `as2box messages list`; records older than retention.messages_days are gone, with their archive)",
            args.id
        )
    })?;
    let items = store.archive_of(args.id)?;
    if items.is_empty() {
        bail!(
            "message {} has nothing archived: a refused message is not stored, and messages handled before this as2box version kept no archive",
            args.id
        );
    }
    prepare_dir(&args.dir, args.force)?;
    let station = store.station(&message.station)?;
    let partner = match store.user(&message.user)? {
        Some(u) => store.partner(u.id, &message.partner, message.test)?,
        None => None,
    };
    let transmission = store.message_transmission(args.id)?.unwrap_or_default();
    let mut out = Out {
        dir: &args.dir,
        force: args.force,
        files: Vec::new(),
    };
    let station_cert = station
        .as_ref()
        .and_then(|s| s.cert_path.as_ref())
        .and_then(|p| std::fs::read(p).ok())
        .and_then(|d| load_certificates(&d).ok())
        .unwrap_or_default();
    let partner_certs = partner_certs(partner.as_ref());
    let mut certificates = Vec::new();
    for (role, certs, what) in [
        ("station", &station_cert, "our station's certificate"),
        (
            "partner",
            &partner_certs,
            "the partner's configured certificates",
        ),
    ] {
        if certs.is_empty() {
            continue;
        }
        let file = format!("{role}.pem");
        out.write(&file, what, &pem_of(certs)?)?;
        certificates.extend(certs.iter().map(|c| {
            let mut v = cert_json(c, &file);
            v["role"] = json!(role);
            v
        }));
    }
    let mut captures = serde_json::Map::new();
    let mut mdn_parsed = None;
    let mut request_mic = None;
    for item in &items {
        let raw = store.read_archived(item)?;
        let kind = item.kind.as_str();
        out.write(
            &format!("{kind}.raw"),
            &format!("the {kind} as it crossed the wire: HTTP header fields, a blank line, the body (its sha256 is the archive's)"),
            &raw,
        )?;
        let (headers, body) = split_http_capture(&raw).with_context(|| {
            format!("the archived {kind} of message {} does not parse", args.id)
        })?;
        out.write(
            &format!("{kind}.smime"),
            &format!("the {kind}'s body as an S/MIME entity for `openssl cms -inform SMIME`"),
            &smime_entity(&headers, &body),
        )?;
        let keys: Vec<KeyPair> = match (item.kind, message.direction.as_str()) {
            (ArchiveKind::Request, "in") => station
                .as_ref()
                .and_then(|s| station_key(s).ok())
                .into_iter()
                .collect(),
            _ => Vec::new(),
        };
        let layers = layers(&headers, &body, &keys);
        if let Some(plain) = &layers.decrypted {
            out.write(
                &format!("{kind}-decrypted.mime"),
                &format!("the {kind} decrypted with the station's key (compare with your own `openssl cms -decrypt`)"),
                plain,
            )?;
        }
        if let Some((content, signature)) = &layers.signed {
            out.write(
                &format!("{kind}-signed-content.mime"),
                &format!("the MIME part the {kind}'s signature covers, byte for byte (its digest is the MIC)"),
                content,
            )?;
            out.write(
                &format!("{kind}-signature.p7s"),
                &format!("the {kind}'s detached signature (CMS, DER)"),
                signature,
            )?;
        }
        let mut v = json!({
            "archived_at": crate::timefmt::rfc3339(item.at_ms),
            "sha256": item.sha256,
            "size": item.size,
            "content_type": headers.get("content-type"),
            "message_id": headers.get("message-id"),
        });
        match (item.kind, message.direction.as_str()) {
            (ArchiveKind::Request, "in") => {
                let analysis =
                    inbound_request(station.as_ref(), &partner_certs, &headers, &body, item);
                request_mic = analysis.1;
                v["check"] = analysis.0;
            }
            (ArchiveKind::Request, _) => {
                v["check"] = outbound_request(&station_cert, &headers, &body, item);
            }
            (ArchiveKind::Mdn, direction) => {
                // Inbound: we signed the MDN with the station's key; outbound: the partner did.
                let signers = if direction == "in" {
                    &station_cert
                } else {
                    &partner_certs
                };
                let role = if direction == "in" {
                    "station"
                } else {
                    "partner"
                };
                let (which, parsed) = first_verifying(signers, |c| {
                    parse_mdn(&headers, &body, c, at_time(item), false)
                });
                v["check"] = match &parsed {
                    Ok(m) => {
                        let mut c = mdn_json(m);
                        c["signature"] = match (&m.signature, which) {
                            (Some(s), Some(i)) => json!({
                                "verified": true,
                                "signer": s.signer,
                                "verified_with": cert_json(&signers[i], &format!("{role}.pem")),
                            }),
                            _ if m.signed => {
                                json!({"verified": false, "reason": format!("no {role} certificate verifies it")})
                            }
                            _ => Value::Null,
                        };
                        c
                    }
                    Err(e) => json!({"error": e.to_string()}),
                };
                mdn_parsed = parsed.ok();
            }
        }
        captures.insert(kind.into(), v);
    }
    let computed: Vec<Mic> = match (message.direction.as_str(), request_mic) {
        ("in", Some(m)) => vec![m],
        _ => crate::daemon::expected_mics(transmission.mic.as_deref()),
    };
    let manifest = json!({
        "format": "as2box-archive/1",
        "exported_at": crate::timefmt::rfc3339(crate::timefmt::now_ms()),
        "message": message_json(&message, &transmission),
        "captures": captures,
        "mic": mic_json(&computed, mdn_parsed.as_ref()),
        "certificates": certificates,
        "files": out.files.iter().map(|f| json!({"name": f.name, "sha256": f.sha256, "size": f.size, "what": f.what})).collect::<Vec<_>>(),
        "verify": verify_commands(&message, station.as_ref(), &items, computed.first().map(|m| m.algorithm.micalg())),
    });
    let sums: String = out
        .files
        .iter()
        .map(|f| format!("{}  {}\n", f.sha256, f.name))
        .collect();
    out.write(
        "SHA256SUMS",
        "the sha256 of every file above, for `sha256sum -c`",
        sums.as_bytes(),
    )?;
    let text = serde_json::to_vec_pretty(&manifest)?;
    out.write("manifest.json", "this manifest", &text)?;
    crate::store::fsync_dir(&args.dir)
        .with_context(|| format!("cannot fsync {}", args.dir.display()))?;
    println!(
        "message {} exported to {} ({} files); re-verify with:",
        args.id,
        args.dir.display(),
        out.files.len()
    );
    for c in manifest["verify"].as_array().into_iter().flatten() {
        println!("  {}", c.as_str().unwrap_or_default());
    }
    Ok(())
}

fn message_json(m: &Message, t: &crate::store::Transmission) -> Value {
    json!({
        "id": m.id,
        "direction": m.direction,
        "user": m.user,
        "station": m.station,
        "partner": m.partner,
        "test": m.test,
        "state": m.state,
        "detail": m.detail,
        "as2_message_id": t.as2_message_id,
        "created_at": m.created_at,
        "updated_at": m.updated_at,
        "files": m.files,
    })
}

/// An inbound request opened again with the station's key and checked against each of the
/// partner's certificates: which one verifies, and the MIC of what it covers.
fn inbound_request(
    station: Option<&Station>,
    partner_certs: &[X509],
    headers: &Headers,
    body: &[u8],
    item: &ArchiveItem,
) -> (Value, Option<Mic>) {
    let info = match RequestInfo::from_headers(headers) {
        Ok(i) => i,
        Err(e) => return (json!({"error": e.to_string()}), None),
    };
    let keys: Vec<KeyPair> = station
        .and_then(|s| station_key(s).ok())
        .into_iter()
        .collect();
    let (which, parsed) = first_verifying(partner_certs, |c| {
        let ctx = ReceiveContext::new(&keys, c, at_time(item));
        parse_body(info.clone(), headers, body, &ctx)
    });
    match parsed {
        Ok(r) => (
            json!({
                "encrypted": r.encryption.map(|c| json!({"cipher": c.map(|c| c.name()), "for_certificate": "station.pem"})),
                "signature": r.signature.as_ref().map(|s| json!({
                    "verified": true,
                    "digest": s.digest.map(|d| d.micalg()),
                    "signer": s.signer,
                    "verified_with": which.map(|i| cert_json(&partner_certs[i], "partner.pem")),
                })),
                "compressed": r.compressed,
                "mic": r.mic.to_header_value(),
                "attachments": r.attachments.iter().map(|a| json!({
                    "filename": a.filename, "size": a.data.len(), "sha256": crate::store::sha256_hex(&a.data),
                })).collect::<Vec<_>>(),
            }),
            Some(r.mic),
        ),
        Err(e) => (json!({"error": e.to_string()}), None),
    }
}

/// An outbound request: encrypted for the partner (only its key opens it), or, when it was
/// sent unencrypted, its signature checked against our station's certificate.
fn outbound_request(
    station_cert: &[X509],
    headers: &Headers,
    body: &[u8],
    item: &ArchiveItem,
) -> Value {
    let media = headers
        .get("content-type")
        .unwrap_or("")
        .to_ascii_lowercase();
    if media.contains("enveloped-data") {
        return json!({"encrypted": {"for_certificate": "the partner's (partner.pem); only the partner's key opens it"}});
    }
    let info = match RequestInfo::from_headers(headers) {
        Ok(i) => i,
        Err(e) => return json!({"error": e.to_string()}),
    };
    let ctx = ReceiveContext::new(&[], station_cert, at_time(item));
    match parse_body(info, headers, body, &ctx) {
        Ok(r) => json!({
            "encrypted": Value::Null,
            "signature": r.signature.as_ref().map(|s| json!({
                "verified": true, "signer": s.signer, "verified_with": "station.pem",
            })),
            "mic": r.mic.to_header_value(),
        }),
        Err(e) => json!({"error": e.to_string()}),
    }
}

/// The `openssl` commands that re-verify the export without as2box.
fn verify_commands(
    m: &Message,
    station: Option<&Station>,
    items: &[ArchiveItem],
    mic_algorithm: Option<&str>,
) -> Vec<String> {
    let at = |k: ArchiveKind| items.iter().find(|i| i.kind == k).map(|i| i.at_ms / 1000);
    let key = station
        .and_then(|s| s.key_path.as_ref())
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "STATION_KEY.pem".into());
    let digest = mic_algorithm.unwrap_or("sha256").replace('-', "");
    let inbound = m.direction == crate::store::Direction::In;
    let mut c = vec!["sha256sum -c SHA256SUMS".to_string()];
    if let Some(t) = at(ArchiveKind::Request).filter(|_| inbound) {
        c.push(format!("openssl cms -decrypt -binary -inform SMIME -in request.smime -inkey {key} -recip station.pem -out decrypted.mime && cmp decrypted.mime request-decrypted.mime"));
        c.push(format!("openssl cms -verify -binary -inform DER -in request-signature.p7s -content request-signed-content.mime -CAfile partner.pem -partial_chain -purpose any -attime {t} -out /dev/null"));
        c.push(format!("openssl dgst -{digest} -binary request-signed-content.mime | base64   # the MIC: .mic.computed in manifest.json"));
    }
    if let Some(t) = at(ArchiveKind::Mdn) {
        let signer = if inbound {
            "station.pem"
        } else {
            "partner.pem"
        };
        c.push(format!("openssl cms -verify -inform SMIME -in mdn.smime -CAfile {signer} -partial_chain -purpose any -attime {t} -out mdn-report.txt"));
        c.push(
            "grep -i Received-Content-MIC mdn-report.txt   # .mic.in_mdn in manifest.json".into(),
        );
    }
    c
}
