//! Where an async MDN we owe may be POSTed. The sender of a message names the URL
//! (`Receipt-Delivery-Option`), so without a rule the daemon would POST to any address a
//! stranger names: an open proxy into the gateway's own network. The rule, decided here
//! and nowhere else:
//!
//! - a URL with the scheme, host and port of the partner's own AS2 URL is allowed;
//! - so is a URL that starts with one of the partner's `mdn_url_allow` entries
//!   (`as2box partner set --mdn-url-allow URL`);
//! - loopback, link-local, private, unique-local and unspecified addresses are reached only
//!   through an allow entry: the partner's own URL does not open them, and the addresses a
//!   host name resolves to are checked again at connect time ([`Destinations`]), so a name
//!   that resolves to 127.0.0.1 gets nowhere.

use std::net::IpAddr;

use crate::store::Partner;

/// Which addresses a POST may connect to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destinations {
    /// Any address (the admin configured this URL: a partner's URL).
    Any,
    /// Public addresses only (a URL named by a sender and allowed by the default rule).
    PublicOnly,
}

/// Why a URL is not allowed, in words for the log (with the fix).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("async MDN URL {url:?} is not allowed for partner {partner}: {why}")]
pub struct NotAllowed {
    /// The URL.
    pub url: String,
    /// The partner's AS2 id.
    pub partner: String,
    /// Why, and what to do.
    pub why: String,
}

/// `scheme://host:port` of a URL, lowercased, with the scheme's default port filled in.
fn origin(url: &str) -> Option<(String, String, u16)> {
    let uri: hyper::Uri = url.parse().ok()?;
    let scheme = uri.scheme_str()?.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    let host = uri.host()?.to_ascii_lowercase();
    Some((scheme, host, uri.port_u16().unwrap_or(default_port)))
}

/// Whether an address is one a stranger must not make us reach.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                // 100.64.0.0/10, carrier-grade NAT (shared address space)
                || (v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal(IpAddr::V4(v4));
            }
            let seg = v6.segments();
            let embedded = |hi: u16, lo: u16| {
                IpAddr::V4(std::net::Ipv4Addr::new(
                    (hi >> 8) as u8,
                    hi as u8,
                    (lo >> 8) as u8,
                    lo as u8,
                ))
            };
            // NAT64 (64:ff9b::/96) and 6to4 (2002::/16) carry an IPv4 address that a
            // gateway on the way turns back into that address.
            if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                return is_internal(embedded(seg[6], seg[7]));
            }
            if seg[0] == 0x2002 && is_internal(embedded(seg[1], seg[2])) {
                return true;
            }
            let first = seg[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (first & 0xffc0) == 0xfe80 // link local fe80::/10
        }
    }
}

/// Whether `url` is `entry` or below it: an entry `https://h/receipts/` (or without the
/// final `/`) takes `https://h/receipts` and `https://h/receipts/x`, not
/// `https://h/receipts-old`. Scheme and host compare without case.
fn under_prefix(url: &str, entry: &str) -> bool {
    let (url, entry) = (url.to_ascii_lowercase(), entry.to_ascii_lowercase());
    let base = entry.trim_end_matches('/');
    match url.strip_prefix(base) {
        Some(rest) => rest.is_empty() || rest.starts_with(['/', '?']),
        None => false,
    }
}

/// Decides whether the async MDN for `partner` may go to `url`, and to which addresses.
pub fn check(url: &str, partner: &Partner) -> Result<Destinations, NotAllowed> {
    let refuse = |why: String| NotAllowed {
        url: url.to_owned(),
        partner: partner.as2_id.clone(),
        why,
    };
    let Some(target) = origin(url) else {
        return Err(refuse("not an http:// or https:// URL with a host".into()));
    };
    let fix = format!(
        "if the partner really receives MDNs there, allow it with `as2box partner set --user <user> {} --mdn-url-allow {}://{}:{}/`",
        partner.as2_id, target.0, target.1, target.2
    );
    // An allow entry matches as a prefix of the whole URL, on an origin boundary: the entry
    // `https://mdn.example` must not allow `https://mdn.example.evil`.
    let listed = partner
        .profile
        .mdn_url_allow
        .iter()
        .any(|entry| origin(entry) == Some(target.clone()) && under_prefix(url, entry));
    if listed {
        return Ok(Destinations::Any);
    }
    let own = partner.url.as_deref().and_then(origin);
    if own.as_ref() != Some(&target) {
        return Err(refuse(format!(
            "it is not on the partner's own AS2 URL ({}); {fix}",
            partner.url.as_deref().unwrap_or("none set")
        )));
    }
    let host = target.1.trim_matches(['[', ']']);
    if let Ok(ip) = host.parse::<IpAddr>() {
        if is_internal(ip) {
            return Err(refuse(format!(
                "{ip} is a loopback, link-local or private address, reached only when listed explicitly; {fix}"
            )));
        }
    }
    Ok(Destinations::PublicOnly)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::PartnerProfile;

    fn partner(url: Option<&str>, allow: &[&str]) -> Partner {
        Partner {
            id: 1,
            user_id: 1,
            as2_id: "BIGCORP".into(),
            test: false,
            url: url.map(str::to_owned),
            profile: PartnerProfile {
                mdn_url_allow: allow.iter().map(|s| s.to_string()).collect(),
                ..PartnerProfile::default()
            },
            created_ms: 0,
        }
    }

    #[test]
    fn the_partners_own_origin_is_allowed_for_public_addresses_only() {
        let p = partner(Some("https://as2.bigcorp.example/as2"), &[]);
        assert_eq!(
            check("https://as2.bigcorp.example/mdn", &p),
            Ok(Destinations::PublicOnly)
        );
        assert_eq!(
            check("https://AS2.bigcorp.example:443/x", &p),
            Ok(Destinations::PublicOnly)
        );
    }

    #[test]
    fn other_hosts_ports_and_schemes_are_refused() {
        let p = partner(Some("https://as2.bigcorp.example/as2"), &[]);
        for url in [
            "http://as2.bigcorp.example/mdn",
            "https://as2.bigcorp.example:8443/mdn",
            "https://evil.example/mdn",
            "https://as2.bigcorp.example.evil.example/mdn",
            "ftp://as2.bigcorp.example/mdn",
            "not a url",
            "",
        ] {
            assert!(check(url, &p).is_err(), "{url}");
        }
        assert!(check("https://x.example/", &partner(None, &[])).is_err());
    }

    #[test]
    fn internal_addresses_need_an_explicit_entry() {
        let p = partner(Some("http://127.0.0.1:8080/as2"), &[]);
        let e = check("http://127.0.0.1:8080/mdn", &p).unwrap_err();
        assert!(
            e.why.contains("--mdn-url-allow http://127.0.0.1:8080/"),
            "{e}"
        );
        let p = partner(
            Some("http://127.0.0.1:8080/as2"),
            &["http://127.0.0.1:8080/"],
        );
        assert_eq!(
            check("http://127.0.0.1:8080/mdn", &p),
            Ok(Destinations::Any)
        );
        // The entry is for one origin only.
        assert!(check("http://127.0.0.1:8081/mdn", &p).is_err());
    }

    #[test]
    fn allow_entries_match_on_origin_and_path_prefix() {
        let p = partner(
            Some("https://as2.bigcorp.example/as2"),
            &["https://mdn.bigcorp.example/receipts/"],
        );
        assert_eq!(
            check("https://mdn.bigcorp.example/receipts/x", &p),
            Ok(Destinations::Any)
        );
        assert!(check("https://mdn.bigcorp.example/other", &p).is_err());
        assert!(check("https://mdn.bigcorp.example/receipts-old/x", &p).is_err());
        assert_eq!(
            check("https://mdn.bigcorp.example/receipts", &p),
            Ok(Destinations::Any)
        );
        assert!(check("https://mdn.bigcorp.example.evil/receipts/x", &p).is_err());
    }

    #[test]
    fn internal_ranges() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::",
            "64:ff9b::a00:1",
            "64:ff9b::7f00:1",
            "2002:a9fe:a9fe::1",
        ] {
            assert!(is_internal(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "192.0.2.1",
            "8.8.8.8",
            "2001:db8::1",
            "100.128.0.1",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert!(!is_internal(ip.parse().unwrap()), "{ip}");
        }
    }
}
