//! `as2box decode`: explain a captured AS2 request or MDN.
//!
//! Reads a capture (HTTP header lines, a blank line, the body), undoes
//! encryption with `--key`, verifies the signature with `--cert`,
//! decompresses, and prints what it found: signed (digest), encrypted
//! (cipher), compressed, the signature check, the MIC the receiver must
//! return, and each attachment's name, size and sha256 — or, for an MDN, its
//! disposition, the returned MIC and the signature check. With `--json` the
//! output is one stable JSON object (documented in docs/AS2.md).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::as2::certs::{load_certificates, KeyPair, ValidityPolicy};
use crate::as2::cms::SignatureInfo;
use crate::as2::mdn::{parse_mdn, Disposition};
use crate::as2::message::{parse_body, split_http_capture, MicRule, ReceiveContext, RequestInfo};
use crate::as2::mic::Mic;
use crate::as2::mime::{sanitize_filename, split_multipart, Entity};
use crate::as2::Headers;

/// Arguments of `as2box decode`.
#[derive(Debug, clap::Args)]
pub struct DecodeArgs {
    /// The captured request or MDN (header lines, blank line, body).
    pub file: PathBuf,
    /// Our private key and certificate: PEM (key + certificate) or PKCS#12.
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// Password of the key or PKCS#12 file.
    #[arg(long)]
    pub key_pass: Option<String>,
    /// The partner's certificate (PEM or DER) to verify signatures with.
    #[arg(long)]
    pub cert: Option<PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Write the attachments into this directory (never overwrites).
    #[arg(long)]
    pub extract: Option<PathBuf>,
    /// Verification time in unix seconds (default: now).
    #[arg(long)]
    pub at: Option<i64>,
    /// Accept a partner certificate outside its validity period (reported).
    #[arg(long)]
    pub accept_expired: bool,
}

fn now_unix() -> i64 {
    crate::timefmt::now_ms() / 1000
}

fn mic_json(m: &Mic, rule: Option<MicRule>) -> Value {
    json!({
        "value": m.digest_b64,
        "algorithm": m.algorithm.micalg(),
        "header": m.to_header_value(),
        "rule": rule.map(MicRule::name),
    })
}

fn sig_json(s: &SignatureInfo) -> Value {
    json!({
        "verified": true,
        "digest": s.digest.map(|d| d.micalg()),
        "signer": s.signer,
        "certificate_valid": s.certificate_valid,
    })
}

fn disposition_tail(d: &Disposition) -> String {
    d.to_field()
        .split_once("; ")
        .map(|(_, t)| t.to_string())
        .unwrap_or_default()
}

fn is_mdn(headers: &Headers, body: &[u8]) -> bool {
    let e = Entity::from_parts(headers.clone(), body);
    match e.media_type().as_str() {
        "multipart/report" => true,
        "multipart/signed" => e
            .content_type()
            .param("boundary")
            .and_then(|b| split_multipart(e.body(), b).ok())
            .and_then(|p| p.first().and_then(|f| Entity::parse(f).ok()))
            .map(|inner| inner.media_type() == "multipart/report")
            .unwrap_or(false),
        _ => false,
    }
}

/// Runs `as2box decode`.
pub fn run(args: &DecodeArgs) -> Result<()> {
    let raw =
        std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let keys = match &args.key {
        Some(p) => {
            let data = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
            vec![KeyPair::load(&data, args.key_pass.as_deref())
                .with_context(|| format!("loading key {}", p.display()))?]
        }
        None => Vec::new(),
    };
    let certs = match &args.cert {
        Some(p) => {
            let data = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
            load_certificates(&data)
                .with_context(|| format!("loading certificate {}", p.display()))?
        }
        None => Vec::new(),
    };
    let at = args.at.unwrap_or_else(now_unix);
    let policy = ValidityPolicy {
        at_unix: at,
        accept_expired: args.accept_expired,
    };
    let (headers, body) =
        split_http_capture(&raw).context("not a capture (headers, blank line, body)")?;

    let (out, ok) = if is_mdn(&headers, &body) {
        decode_mdn(&headers, &body, &certs, policy)
    } else {
        decode_message(
            &headers,
            &body,
            &keys,
            &certs,
            policy,
            args.extract.as_deref(),
        )?
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_text(&out, "");
    }
    if !ok {
        bail!(
            "{}",
            out["error"]["message"]
                .as_str()
                .unwrap_or("decoding failed")
        );
    }
    Ok(())
}

fn decode_mdn(
    headers: &Headers,
    body: &[u8],
    certs: &[openssl::x509::X509],
    policy: ValidityPolicy,
) -> (Value, bool) {
    match parse_mdn(headers, body, certs, policy, false) {
        Ok(m) => (
            json!({
                "kind": "mdn",
                "ok": true,
                "message_id": m.message_id,
                "as2_from": m.as2_from,
                "original_message_id": m.original_message_id,
                "disposition": disposition_tail(&m.disposition),
                "processed": m.disposition.is_processed(),
                "mic": m.mic.as_ref().map(|x| mic_json(x, None)),
                "signed": m.signed,
                "signature": match (&m.signature, m.signed) {
                    (Some(s), _) => sig_json(s),
                    (None, true) => json!({"verified": false, "reason": "no --cert given"}),
                    (None, false) => Value::Null,
                },
                "reporting_ua": m.reporting_ua,
                "error": Value::Null,
            }),
            true,
        ),
        Err(e) => (
            json!({
                "kind": "mdn",
                "ok": false,
                "message_id": headers.get("message-id").map(crate::as2::headers::normalize_message_id),
                "error": {"message": e.to_string(), "disposition_modifier": e.disposition_modifier().as_str()},
            }),
            false,
        ),
    }
}

fn decode_message(
    headers: &Headers,
    body: &[u8],
    keys: &[KeyPair],
    certs: &[openssl::x509::X509],
    policy: ValidityPolicy,
    extract: Option<&Path>,
) -> Result<(Value, bool)> {
    let info = match RequestInfo::from_headers(headers) {
        Ok(i) => i,
        Err(e) => {
            return Ok((
                json!({"kind": "message", "ok": false,
                       "error": {"message": e.to_string(), "disposition_modifier": e.disposition_modifier().as_str()}}),
                false,
            ))
        }
    };
    let mdn_req = info.mdn.as_ref().map(|m| {
        json!({
            "mode": if m.async_url.is_some() { "async" } else { "sync" },
            "url": m.async_url,
            "signed": m.options.wants_signed(),
            "micalgs": m.options.micalgs,
        })
    });
    let base = json!({
        "kind": "message",
        "message_id": info.message_id,
        "as2_from": info.as2_from,
        "as2_to": info.as2_to,
        "subject": info.subject,
        "content_type": headers.get("content-type"),
        "mdn_requested": mdn_req,
    });
    let ctx = ReceiveContext::new(keys, certs, policy);
    let mut out = base;
    match parse_body(info, headers, body, &ctx) {
        Ok(r) => {
            let mut atts = Vec::new();
            for (i, a) in r.attachments.iter().enumerate() {
                let mut entry = json!({
                    "filename": a.filename,
                    "content_type": a.content_type,
                    "size": a.data.len(),
                    "sha256": crate::store::sha256_hex(&a.data),
                });
                if let Some(dir) = extract {
                    let name = a
                        .filename
                        .as_deref()
                        .and_then(sanitize_filename)
                        .unwrap_or_else(|| format!("attachment-{}.bin", i + 1));
                    let path = dir.join(&name);
                    std::fs::create_dir_all(dir)
                        .with_context(|| format!("creating {}", dir.display()))?;
                    let mut f = std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .open(&path)
                        .with_context(|| format!("creating {} (exists?)", path.display()))?;
                    std::io::Write::write_all(&mut f, &a.data)?;
                    entry["extracted_to"] = json!(path.display().to_string());
                }
                atts.push(entry);
            }
            out["ok"] = json!(true);
            out["encrypted"] = match &r.encryption {
                Some(c) => json!({"cipher": c.map(|c| c.name())}),
                None => Value::Null,
            };
            out["signed"] = r.signature.as_ref().map(sig_json).unwrap_or(Value::Null);
            out["compressed"] = if r.compressed {
                json!({"before_signing": r.compressed_before_signing})
            } else {
                Value::Null
            };
            out["mic"] = mic_json(&r.mic, Some(r.mic_rule));
            out["mic_alternatives"] = Value::Array(
                r.mic_alternatives
                    .iter()
                    .map(|(rule, m)| mic_json(m, Some(*rule)))
                    .collect(),
            );
            out["attachments"] = Value::Array(atts);
            out["error"] = Value::Null;
            Ok((out, true))
        }
        Err(e) => {
            out["ok"] = json!(false);
            out["error"] = json!({
                "message": e.to_string(),
                "disposition_modifier": e.disposition_modifier().as_str(),
            });
            Ok((out, false))
        }
    }
}

fn print_text(v: &Value, indent: &str) {
    let Some(obj) = v.as_object() else { return };
    for (k, val) in obj {
        match val {
            Value::Null => {}
            Value::Object(_) => {
                println!("{indent}{k}:");
                print_text(val, &format!("{indent}  "));
            }
            Value::Array(items) => {
                if items.is_empty() {
                    continue;
                }
                println!("{indent}{k}:");
                for it in items {
                    if it.is_object() {
                        println!("{indent}  -");
                        print_text(it, &format!("{indent}    "));
                    } else {
                        println!(
                            "{indent}  - {}",
                            it.as_str()
                                .map(str::to_string)
                                .unwrap_or_else(|| it.to_string())
                        );
                    }
                }
            }
            Value::String(s) => println!("{indent}{k}: {s}"),
            other => println!("{indent}{k}: {other}"),
        }
    }
}
