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
pub fn dedupe(names: &mut [String]) {
    let mut seen = std::collections::HashSet::new();
    for name in names.iter_mut() {
        if seen.insert(name.clone()) {
            continue;
        }
        let (stem, ext) = match name.rfind('.') {
            Some(i) if i > 0 => (name[..i].to_owned(), name[i..].to_owned()),
            _ => (name.clone(), String::new()),
        };
        let mut n = 2;
        loop {
            let candidate = shorten(&format!("{stem}-{n}{ext}"), MAX_ATTACHMENT_NAME);
            if seen.insert(candidate.clone()) {
                *name = candidate;
                break;
            }
            n += 1;
        }
    }
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
