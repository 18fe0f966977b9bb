//! Reading small files whose size someone else controls (policy files, key files, the audit
//! head file, the host id): never more than a stated bound into memory, so a huge file or
//! `/dev/zero` at that path is refused instead of exhausting the host's memory.

use std::io::Read;
use std::path::Path;

/// The bytes of `path` when it holds at most `max` bytes. Errors: those of opening and
/// reading, and `InvalidData` ("larger than {max} bytes") when it holds more; at most
/// `max + 1` bytes are read either way.
pub(crate) fn read_at_most(path: &Path, max: usize) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(max as u64 + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {max} bytes"),
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_file_of_the_bound_is_read_and_one_byte_more_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, [7u8; 16]).unwrap();
        assert_eq!(super::read_at_most(&path, 16).unwrap(), [7u8; 16]);
        let e = super::read_at_most(&path, 15).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("larger than 15 bytes"), "{e}");
    }
}
