//! Text helpers.

/// Escapes a string for inclusion in JSON.
pub fn escape_json(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// Normalises a SKU: trims it and upper-cases it.
pub fn normalise_sku(s: &str) -> String {
    s.trim().to_uppercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_quotes_and_newlines() {
        assert_eq!(escape_json("a\"b\nc"), "a\\\"b\\nc");
    }

    #[test]
    fn normalises() {
        assert_eq!(normalise_sku("  ab-1 "), "AB-1");
    }
}
