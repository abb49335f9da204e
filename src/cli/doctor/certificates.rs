//! Keys and certificates of stations and partners: expired (fail), expiring within
//! `keys::WARN_DAYS` (warn), private keys readable by others or unreadable by the daemon,
//! and partners allowed to send unsigned or unencrypted messages.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::store::StoreFacts;
use super::{fail, ok, warn, Check};
use crate::store::{InboundRequirements, PartnerFiles, StationFiles};

fn check_cert(name: &'static str, what: &str, path: &Path, fix: &str) -> Check {
    match crate::keys::read_cert(path).and_then(|c| crate::keys::days_left(&c)) {
        Ok(d) if d < 0 => fail(
            name,
            format!(
                "{what}: certificate {} EXPIRED {} day(s) ago",
                path.display(),
                -d
            ),
            fix,
        ),
        Ok(d) if d < crate::keys::WARN_DAYS => warn(
            name,
            format!(
                "{what}: certificate {} expires in {d} day(s)",
                path.display()
            ),
            fix,
        ),
        Ok(d) => ok(
            name,
            format!("{what}: certificate valid for {d} more day(s)"),
        ),
        Err(e) => fail(name, format!("{what}: {e}"), fix),
    }
}

/// Can the service account (uid, gid) read `path`? (Root reads everything.)
fn readable_by(m: &std::fs::Metadata, uid: u32, gid: u32) -> bool {
    let mode = m.mode();
    (m.uid() == uid && mode & 0o400 != 0)
        || (m.gid() == gid && mode & 0o040 != 0)
        || mode & 0o004 != 0
}

pub(super) fn check_certificates(facts: &StoreFacts, service: Option<(u32, u32)>) -> Vec<Check> {
    let mut checks = Vec::new();
    for StationFiles {
        as2_id: station,
        key_path: key,
        cert_path: cert,
    } in &facts.stations
    {
        let what = format!("station {station}");
        let fix = format!("as2box station set {station} --generate-cert (or --key K.pem --cert C.pem), then give partners the new certificate");
        match cert {
            Some(cert) => checks.push(check_cert("certificates", &what, cert, &fix)),
            None => checks.push(warn(
                "certificates",
                format!("{what} has no key and certificate: it cannot sign or decrypt"),
                fix.clone(),
            )),
        }
        if let Some(key) = key {
            match std::fs::metadata(key) {
                Err(e) => checks.push(fail(
                    "keys",
                    format!("{what}: key {}: {e}", key.display()),
                    fix,
                )),
                Ok(m) if m.mode() & 0o007 != 0 => checks.push(fail(
                    "keys",
                    format!(
                        "{what}: private key {} is readable by everyone (mode {:04o})",
                        key.display(),
                        m.mode() & 0o7777
                    ),
                    format!(
                        "chmod 0640 {} && chgrp as2box {}",
                        key.display(),
                        key.display()
                    ),
                )),
                Ok(m) => match service {
                    Some((uid, gid)) if !readable_by(&m, uid, gid) => checks.push(fail(
                        "keys",
                        format!(
                            "{what}: the service account cannot read the private key {}",
                            key.display()
                        ),
                        format!(
                            "chgrp as2box {} && chmod 0640 {}",
                            key.display(),
                            key.display()
                        ),
                    )),
                    _ => checks.push(ok(
                        "keys",
                        format!(
                            "{what}: private key {} readable by the daemon only",
                            key.display()
                        ),
                    )),
                },
            }
        }
    }
    for PartnerFiles {
        user,
        as2_id: partner,
        test,
        certs,
        inbound,
    } in &facts.partners
    {
        let what = format!(
            "partner {partner}{} of {user}",
            if *test { " (test)" } else { "" }
        );
        let fix = format!(
            "ask {partner} for its new certificate, then: as2box partner cert add --user {user} {partner}{} NEW.pem",
            if *test { " --test" } else { "" }
        );
        // An unreadable certificate is judged only when none can be read.
        let longest = crate::keys::longest_lasting(certs).or(certs.first());
        if let Some(cert) = longest {
            checks.push(check_cert("certificates", &what, cert, &fix));
        }
        if let Some(InboundRequirements {
            signature: sig,
            encryption: enc,
        }) = inbound
        {
            if !sig || !enc {
                let off = match (sig, enc) {
                    (false, false) => "unsigned and unencrypted",
                    (false, true) => "unsigned",
                    _ => "unencrypted",
                };
                checks.push(warn(
                    "inbound",
                    format!("{what} may send {off} messages: anyone who knows the two AS2 ids can"),
                    format!(
                        "unless {partner} really trades plain AS2: as2box partner set --user {user} {partner}{} --require-signature yes --require-encryption yes",
                        if *test { " --test" } else { "" }
                    ),
                ));
            }
        }
    }
    if checks.is_empty() {
        checks.push(ok(
            "certificates",
            "no stations or partner certificates yet",
        ));
    }
    checks
}
