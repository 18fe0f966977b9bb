//! The SDK's table of integers narrower than `u64` (`qi_agent/_wire.py`, `NARROW_INTS`) is the
//! WIT's: an integer added to the WIT without it would let a Python agent trap the component
//! with an out-of-range value instead of getting the interface's own error.

use std::collections::BTreeSet;

use qi_build_py::{SDK_FILES, WIT_FILES};

fn pascal(kebab: &str) -> String {
    kebab
        .split('-')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

fn bits(ty: &str) -> Option<u32> {
    let ty = ty.trim().trim_end_matches(',');
    let ty = ty
        .strip_prefix("option<")
        .and_then(|t| t.strip_suffix('>'))
        .unwrap_or(ty);
    match ty {
        "u8" => Some(8),
        "u16" => Some(16),
        "u32" => Some(32),
        "u64" => None,
        t if t.starts_with('s') && t[1..].parse::<u32>().is_ok() => {
            panic!("a signed integer ({t}) in the WIT: _wire.py assumes every integer is unsigned")
        }
        _ => None,
    }
}

/// `(function or record, field, bits)` of every integer narrower than u64 in the WIT.
fn from_wit() -> BTreeSet<(String, String, u32)> {
    let mut found = BTreeSet::new();
    for (_, text) in WIT_FILES {
        let mut record: Option<String> = None;
        for line in text.lines().map(str::trim) {
            if line.starts_with("//") {
                continue;
            }
            if let Some(name) = line.strip_prefix("record ") {
                record = Some(pascal(name.trim_end_matches('{').trim()));
                continue;
            }
            if line.starts_with('}') {
                record = None;
                continue;
            }
            if let Some((name, rest)) = line.split_once(": func(") {
                let params = rest.split_once(')').map(|(p, _)| p).unwrap_or("");
                for param in params.split(", ").filter(|p| !p.is_empty()) {
                    let (field, ty) = param.split_once(':').expect("name: type");
                    if let Some(b) = bits(ty) {
                        found.insert((name.replace('-', "_"), field.replace('-', "_"), b));
                    }
                }
                continue;
            }
            if let (Some(owner), Some((field, ty))) = (&record, line.split_once(':'))
                && let Some(b) = bits(ty)
            {
                found.insert((owner.clone(), field.trim().replace('-', "_"), b));
            }
        }
    }
    found
}

/// The entries of `NARROW_INTS` in `_wire.py`.
fn from_sdk() -> BTreeSet<(String, String, u32)> {
    let wire = SDK_FILES
        .iter()
        .find(|(n, _)| *n == "_wire.py")
        .expect("_wire.py is embedded")
        .1;
    let table = wire
        .split_once("NARROW_INTS: Dict[Tuple[str, str], int] = {")
        .expect("the table")
        .1
        .split_once('}')
        .expect("its end")
        .0;
    table
        .lines()
        .filter_map(|l| l.trim().strip_prefix("(\""))
        .map(|l| {
            let (owner, rest) = l.split_once("\", \"").unwrap();
            let (field, rest) = rest.split_once("\"):").unwrap();
            let b = rest.trim().trim_end_matches(',').parse().unwrap();
            (owner.to_owned(), field.to_owned(), b)
        })
        .collect()
}

#[test]
fn narrow_ints_match_the_wit() {
    let wit = from_wit();
    assert!(wit.len() >= 5, "the WIT parse found too little: {wit:?}");
    assert_eq!(from_sdk(), wit);
}
