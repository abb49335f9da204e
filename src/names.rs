//! Rules for names: user names, AS2 ids used as folder names, names users give files, and
//! attachment names that arrive from the network (untrusted).

/// Longest attachment name kept (bytes); longer names are shortened, keeping the extension.
pub const MAX_ATTACHMENT_NAME: usize = 200;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// A user name outside the allowed alphabet.
    #[error("user name {0:?} is not allowed: use 1 to 32 latin letters, digits, '-' or '_', not starting with '-'")]
    BadUserName(String),
    /// An AS2 id that cannot be a folder name or an AS2 header value.
    #[error("AS2 id {0:?} is not allowed: use 1 to 128 printable ASCII characters without '/', '\\', '\"', not '.' or '..' and not starting with '.' or a space")]
    BadAs2Id(String),
    /// A file name with control characters.
    #[error("file name has a control character")]
    ControlCharacter,
    /// A file name over 255 bytes.
    #[error("file name is longer than 255 bytes")]
    TooLong,
}

/// Checks a mailbox user name (also the system account name).
pub fn check_user_name(name: &str) -> Result<(), NameError> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(NameError::BadUserName(name.to_owned()))
    }
}

/// Checks an AS2 id (RFC 4130 §6.2 allows printable ASCII; we also need a safe folder name).
pub fn check_as2_id(id: &str) -> Result<(), NameError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id != "."
        && id != ".."
        && !id.starts_with('.')
        && !id.starts_with(' ')
        && !id.ends_with(' ')
        && id
            .bytes()
            .all(|b| (0x20..0x7f).contains(&b) && b != b'/' && b != b'\\' && b != b'"');
    if ok {
        Ok(())
    } else {
        Err(NameError::BadAs2Id(id.to_owned()))
    }
}

/// Checks a name a user gives a file or folder through the filesystem. The kernel already
/// refuses `/` and NUL and resolves `.` and `..`.
pub fn check_fs_name(name: &[u8]) -> Result<(), NameError> {
    if name.len() > 255 {
        return Err(NameError::TooLong);
    }
    if name.iter().any(|&b| b < 0x20 || b == 0x7f) {
        return Err(NameError::ControlCharacter);
    }
    Ok(())
}

/// True for names that clients use while an upload is in progress: they wait in the outbox
/// until renamed (WinSCP's `.filepart`, FileZilla's and others' `.part`/`.tmp`, dot files).
pub fn is_temp_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    name.starts_with('.')
        || lower.ends_with(".filepart")
        || lower.ends_with(".part")
        || lower.ends_with(".tmp")
}

/// The suffix that marks an outbox folder as ready to send.
pub const READY_SUFFIX: &str = ".ready";

/// Makes an untrusted attachment name safe to use as one path component: strips any path,
/// replaces control characters, refuses `.`/`..`, caps the length. `index` (from 1) names
/// attachments that end up with no usable name.
pub fn sanitize_attachment_name(raw: &str, index: usize) -> String {
    let last = raw.rsplit(['/', '\\']).next().unwrap_or("");
    let mut name: String = last
        .chars()
        .map(|c| if c.is_control() { '_' } else { c })
        .collect();
    let name_trimmed = name.trim();
    if name_trimmed.is_empty() || name_trimmed == "." || name_trimmed == ".." {
        return format!("attachment-{index}");
    }
    name = name_trimmed.to_owned();
    if name.starts_with('.') {
        name.replace_range(0..1, "_");
    }
    shorten(&name, MAX_ATTACHMENT_NAME)
}

/// A name for an attachment its sender did not name: from the message's Message-ID (unique
/// per sender, so two unnamed files never get the same name and, in the `plain` inbox
/// layout, never replace each other), `-<n>` when the message has several, and an
/// extension from its content type. `index` counts from 1.
pub fn unnamed_attachment_name(
    message_id: &str,
    index: usize,
    count: usize,
    content_type: &str,
) -> String {
    let media = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let ext = match media.as_str() {
        "application/edi-x12" => ".x12",
        "application/edifact" => ".edifact",
        "application/edi-consent" => ".edi",
        "application/xml" | "text/xml" => ".xml",
        "application/json" => ".json",
        "application/pdf" => ".pdf",
        "text/csv" => ".csv",
        "text/plain" => ".txt",
        _ => ".bin",
    };
    let mut base: String = message_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    base = base.trim_start_matches(['.', '_']).to_owned();
    if base.is_empty() {
        base = "message".into();
    }
    let part = if count > 1 {
        format!("-{index}")
    } else {
        String::new()
    };
    let tail = format!("{part}{ext}");
    // The base is ASCII: any byte is a character boundary.
    base.truncate(MAX_ATTACHMENT_NAME - tail.len());
    base + &tail
}

/// Shortens `name` to at most `max` bytes on a character boundary, keeping a short
/// extension (up to 16 bytes) so that the file type survives.
pub fn shorten(name: &str, max: usize) -> String {
    if name.len() <= max {
        return name.to_owned();
    }
    let ext = match name.rfind('.') {
        Some(i) if i > 0 && name.len() - i <= 16 => &name[i..],
        _ => "",
    };
    let mut cut = max - ext.len();
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{}", &name[..cut], ext)
}

/// Makes names unique within one message: the second `a.txt` becomes `a-2.txt`.
///
/// Linear in the number of names (the names come from the network): each base name keeps
/// the next counter to try, so the k-th copy of a name does not try k-1 taken names first.
pub fn dedupe(names: &mut [String]) {
    dedupe_counting(names);
}

/// [`dedupe`], returning how many names it tried, the names as given included: at most three
/// per name (the name itself; a candidate that is taken; a candidate refused because a name
/// as given already is that exact string, and no string is the candidate of two bases or
/// of one base twice).
fn dedupe_counting(names: &mut [String]) -> usize {
    use std::collections::{HashMap, HashSet};
    // Room for `-` and any counter a slice can need, so that shortening a long name never
    // cuts the counter off (which made every candidate equal to the name itself).
    const COUNTER_ROOM: usize = 1 + 20;
    let mut used: HashSet<String> = HashSet::with_capacity(names.len());
    let mut next: HashMap<(String, String), usize> = HashMap::new();
    let mut tried = 0;
    for name in names.iter_mut() {
        tried += 1;
        if used.insert(name.clone()) {
            continue;
        }
        let (stem, ext) = match name.rfind('.') {
            Some(i) if i > 0 && name.len() - i <= 16 => (&name[..i], &name[i..]),
            _ => (name.as_str(), ""),
        };
        let room = MAX_ATTACHMENT_NAME.saturating_sub(ext.len() + COUNTER_ROOM);
        let stem = if stem.len() > room {
            let mut cut = room;
            while !stem.is_char_boundary(cut) {
                cut -= 1;
            }
            &stem[..cut]
        } else {
            stem
        };
        let key = (stem.to_owned(), ext.to_owned());
        let n = next.entry(key).or_insert(2);
        loop {
            let candidate = format!("{}-{}{}", stem, *n, ext);
            *n += 1;
            tried += 1;
            if used.insert(candidate.clone()) {
                *name = candidate;
                break;
            }
        }
    }
    tried
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn user_names() {
        assert!(check_user_name("acme_01-x").is_ok());
        for bad in ["", "-x", "a b", "é", "a/b", "root:x", &"a".repeat(33)] {
            assert!(check_user_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn as2_ids() {
        assert!(check_as2_id("ACME AS2").is_ok());
        assert!(check_as2_id("mecas2").is_ok());
        for bad in [
            "", ".", "..", ".x", "a/b", "a\\b", "a\"b", "a\u{1}", " x", "é",
        ] {
            assert!(check_as2_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn temp_names() {
        for t in [".x", "a.filepart", "a.PART", "a.tmp", "a.txt.filepart"] {
            assert!(is_temp_name(t), "{t}");
        }
        for n in ["a.txt", "part", "tmp", "a.parts"] {
            assert!(!is_temp_name(n), "{n}");
        }
    }

    #[test]
    fn hostile_attachment_names() {
        assert_eq!(sanitize_attachment_name("../../etc/passwd", 1), "passwd");
        assert_eq!(sanitize_attachment_name("C:\\x\\..\\y.edi", 1), "y.edi");
        assert_eq!(sanitize_attachment_name("..", 3), "attachment-3");
        assert_eq!(sanitize_attachment_name("a/..", 2), "attachment-2");
        assert_eq!(sanitize_attachment_name("", 1), "attachment-1");
        assert_eq!(sanitize_attachment_name("a\0b\u{7}c", 1), "a_b_c");
        assert_eq!(sanitize_attachment_name(".bashrc", 1), "_bashrc");
        let long = format!("{}.edi", "x".repeat(400));
        let s = sanitize_attachment_name(&long, 1);
        assert_eq!(s.len(), MAX_ATTACHMENT_NAME);
        assert!(s.ends_with(".edi"));
    }

    #[test]
    fn unnamed_attachments_are_named_by_message_id_and_type() {
        assert_eq!(
            unnamed_attachment_name(
                "<1234.5@partner.example>",
                1,
                1,
                "application/EDI-X12; charset=x"
            ),
            "1234.5_partner.example_.x12"
        );
        assert_eq!(
            unnamed_attachment_name("abc@x", 2, 3, "application/edifact"),
            "abc_x-2.edifact"
        );
        assert_eq!(
            unnamed_attachment_name("../..", 1, 1, "image/png"),
            "message.bin"
        );
        assert_ne!(
            unnamed_attachment_name("a@x", 1, 1, "text/plain"),
            unnamed_attachment_name("b@x", 1, 1, "text/plain")
        );
        let long = unnamed_attachment_name(&"m".repeat(1000), 7, 9, "application/xml");
        assert!(
            long.len() <= MAX_ATTACHMENT_NAME && long.ends_with("-7.xml"),
            "{long}"
        );
    }

    #[test]
    fn dedupe_adds_counters_before_extension() {
        let mut v = vec![
            "a.txt".to_owned(),
            "a.txt".to_owned(),
            "a.txt".to_owned(),
            "b".into(),
            "b".into(),
        ];
        dedupe(&mut v);
        assert_eq!(v, ["a.txt", "a-2.txt", "a-3.txt", "b", "b-2"]);
    }

    #[test]
    fn dedupe_is_linear_in_the_number_of_names() {
        // 100,000 copies of one name: each gets the next counter, one candidate each.
        let mut v = vec!["a.txt".to_owned(); 100_000];
        let tried = dedupe_counting(&mut v);
        assert!(
            tried <= 3 * v.len(),
            "{tried} candidates for {} names",
            v.len()
        );
        assert_eq!(v[99_999], "a-100000.txt");
        let set: std::collections::HashSet<_> = v.iter().collect();
        assert_eq!(set.len(), v.len());

        // Names chosen to be the candidates of later duplicates still cost one try each.
        let k = 20_000;
        let mut v: Vec<String> = (2..=k).map(|i| format!("b-{i}.edi")).collect();
        v.extend(std::iter::repeat_n("b.edi".to_owned(), k));
        let tried = dedupe_counting(&mut v);
        assert!(
            tried <= 3 * v.len(),
            "{tried} candidates for {} names",
            v.len()
        );
        let set: std::collections::HashSet<_> = v.iter().collect();
        assert_eq!(set.len(), v.len(), "all names unique");
        assert_eq!(
            v.last().map(String::as_str),
            Some(format!("b-{}.edi", 2 * k - 1).as_str())
        );
    }

    #[test]
    fn dedupe_of_names_at_the_length_limit_terminates_and_keeps_the_counter() {
        let long = format!("{}.edi", "x".repeat(MAX_ATTACHMENT_NAME - 4));
        assert_eq!(long.len(), MAX_ATTACHMENT_NAME);
        let mut v = vec![long.clone(); 3];
        dedupe(&mut v);
        assert_eq!(v[0], long);
        for n in &v[1..] {
            assert!(n.len() <= MAX_ATTACHMENT_NAME, "{}", n.len());
            assert!(n.ends_with(".edi"));
        }
        assert!(
            v[1].ends_with("-2.edi") && v[2].ends_with("-3.edi"),
            "{v:?}"
        );
        // A long extension is not kept apart from the stem.
        let odd = format!("a.{}", "y".repeat(300));
        let mut v = vec![odd.clone(), odd];
        dedupe(&mut v);
        assert_ne!(v[0], v[1]);
    }

    proptest! {
        #[test]
        fn deduped_names_are_unique_and_first_copies_keep_their_name(
            picks in proptest::collection::vec(0usize..6, 0..60)
        ) {
            let pool = ["a.txt", "a-2.txt", "a", "a-2", "a-3.txt", ".x"];
            let mut v: Vec<String> = picks.iter().map(|&i| pool[i].to_owned()).collect();
            let orig = v.clone();
            let tried = dedupe_counting(&mut v);
            prop_assert!(tried <= 3 * v.len());
            let set: std::collections::HashSet<_> = v.iter().collect();
            prop_assert_eq!(set.len(), v.len());
            for (i, n) in orig.iter().enumerate() {
                if orig[..i].iter().all(|p| p != n) && !v[..i].contains(n) {
                    prop_assert_eq!(&v[i], n);
                }
            }
        }
    }

    proptest! {
        #[test]
        fn sanitized_names_are_one_safe_component(raw in ".{0,600}", i in 1usize..50) {
            let s = sanitize_attachment_name(&raw, i);
            prop_assert!(!s.is_empty());
            prop_assert!(s.len() <= MAX_ATTACHMENT_NAME);
            prop_assert!(!s.contains('/') && !s.contains('\\') && !s.contains('\0'));
            prop_assert!(s != "." && s != "..");
            prop_assert!(!s.starts_with('.'));
            prop_assert!(check_fs_name(s.as_bytes()).is_ok());
        }
    }
}
