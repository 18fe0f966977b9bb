//! NATS subject tokens for qi-host names.
//!
//! A NATS subject is tokens separated by `.`, where `*` and `>` are wildcards and whitespace
//! is not allowed. Context ids and host names are put in one token each by [`token`], which
//! keeps `[A-Za-z0-9_-]` and writes every other byte as `~XX` (two hex digits, upper case;
//! `~` itself too), so the mapping is one to one and a context named `a.>` can never reach
//! another context's subject or a wildcard.

/// The longest host name ([`is_name`]).
pub const MAX_NAME: usize = 64;

/// `text` as one subject token (see the module docs). The empty string is `~`, which no
/// other text maps to.
pub fn token(text: &str) -> String {
    if text.is_empty() {
        return "~".into();
    }
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("~{b:02X}"));
        }
    }
    out
}

/// Whether `name` is a valid host name: 1 to [`MAX_NAME`] characters from
/// `[A-Za-z0-9_-]` (so it is its own subject token and a valid KV key).
pub fn is_name(name: &str) -> bool {
    (1..=MAX_NAME).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_one_to_one_and_never_wildcards_or_separators() {
        let names = [
            "a", "a.b", "a~2Eb", "a>", "*", "", "~", "ctx 1", "é", "a_b-c",
        ];
        let tokens: Vec<String> = names.iter().map(|n| token(n)).collect();
        for t in &tokens {
            assert!(!t.is_empty());
            assert!(
                t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'~'),
                "{t}"
            );
        }
        let mut unique = tokens.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), tokens.len(), "{tokens:?}");
        assert_eq!(token("a.b"), "a~2Eb");
        assert_eq!(token("a_b-c"), "a_b-c");
    }

    #[test]
    fn host_names_are_bounded() {
        assert!(is_name(&"h".repeat(MAX_NAME)));
        assert!(!is_name(&"h".repeat(MAX_NAME + 1)));
        assert!(!is_name(""));
        assert!(!is_name("a.b"));
    }
}
