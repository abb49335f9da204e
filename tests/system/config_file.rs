//! The shipped settings file (`packaging/as2box.toml`, installed as
//! /etc/as2box/as2box.toml): every setting of `Config` is listed, commented out, with its
//! default. Not a system test: runs with plain `cargo test`.

use std::collections::BTreeSet;
use std::path::Path;

use as2box::config::Config;

const SHIPPED: &str = include_str!("../../packaging/as2box.toml");

/// Settings without a default (shown with an example value).
const NO_DEFAULT: &[&str] = &[
    "serve.https_listen",
    "serve.tls_cert",
    "serve.tls_key",
    "serve.public_url",
    "alerts.webhook_url",
    "alerts.webhook_headers",
    "alerts.command",
];

fn load(text: &str) -> Result<Config, String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("as2box.toml");
    std::fs::write(&path, text).unwrap();
    Config::load(&path).map_err(|e| e.to_string())
}

/// The names serde expects at one level, read from its "unknown field" error (the config
/// structs deny unknown fields), so that the list follows `Config` without an edit here.
fn expected_fields(section: Option<&str>) -> BTreeSet<String> {
    let probe = match section {
        Some(s) => format!("[{s}]\nno_such_setting = 1\n"),
        None => "no_such_setting = 1\n".to_string(),
    };
    let err = load(&probe).unwrap_err();
    let list = err
        .split("expected one of ")
        .nth(1)
        .or_else(|| err.split("expected ").nth(1))
        .unwrap_or_else(|| panic!("no field list in {err:?}"));
    // "`a`, `b` or `c`": the names are the quoted words (up to the end of that line).
    let list = list.lines().next().unwrap_or("");
    list.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// (section, key) of every `#key = value` line of the shipped file.
fn listed() -> BTreeSet<(String, String)> {
    let mut section = String::new();
    let mut out = BTreeSet::new();
    for line in SHIPPED.lines() {
        if let Some(s) = line.strip_prefix('[') {
            section = s.trim_end_matches(']').to_string();
        } else if let Some(rest) = line.strip_prefix('#') {
            if let Some((key, _)) = rest.split_once(" = ") {
                if !key.is_empty() && key.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                    out.insert((section.clone(), key.to_string()));
                }
            }
        }
    }
    out
}

#[test]
fn every_setting_is_listed_in_its_section() {
    let sections = expected_fields(None);
    assert!(
        sections.contains("serve") && sections.contains("mount"),
        "{sections:?}"
    );
    let listed = listed();
    let mut missing = Vec::new();
    let mut all = BTreeSet::new();
    for s in &sections {
        for f in expected_fields(Some(s)) {
            if !listed.contains(&(s.clone(), f.clone())) {
                missing.push(format!("{s}.{f}"));
            }
            all.insert((s.clone(), f));
        }
    }
    assert!(
        missing.is_empty(),
        "settings missing from packaging/as2box.toml: {missing:?}"
    );
    let unknown: Vec<_> = listed.difference(&all).collect();
    assert!(unknown.is_empty(), "not settings: {unknown:?}");
}

#[test]
fn the_listed_values_are_the_defaults() {
    // As shipped (everything commented out): the defaults.
    let shipped = load(SHIPPED).unwrap();
    assert_eq!(format!("{shipped:?}"), format!("{:?}", Config::default()));
    // Every line uncommented: still the defaults, but for the settings that have none.
    let uncommented: String = SHIPPED
        .lines()
        .map(|l| match l.strip_prefix('#') {
            Some(rest)
                if rest.contains(" = ") && rest.starts_with(|c: char| c.is_ascii_lowercase()) =>
            {
                rest
            }
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut all = load(&uncommented).unwrap_or_else(|e| panic!("{e}\n{uncommented}"));
    assert!(all.serve.https_listen.is_some() && all.serve.public_url.is_some());
    assert_eq!(NO_DEFAULT.len(), 7);
    all.serve.https_listen = None;
    all.serve.tls_cert = None;
    all.serve.tls_key = None;
    all.serve.public_url = None;
    assert!(all.alerts.webhook_url.is_some() && !all.alerts.command.is_empty());
    all.alerts.webhook_url = None;
    all.alerts.webhook_headers.clear();
    all.alerts.command.clear();
    assert_eq!(format!("{all:?}"), format!("{:?}", Config::default()));
    assert!(Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("packaging/as2box.toml")
        .exists());
}
