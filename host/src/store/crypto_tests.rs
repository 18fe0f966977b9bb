//! Unit tests of `crypto` and `keyring`: sealing, associated data, key rows, rotation staging.

use super::StoreError;
use super::crypto::*;

#[track_caller]
fn refused(result: Result<Vec<u8>, StoreError>, because: &str) {
    match result {
        Err(StoreError::Decode(message)) => {
            assert!(message.contains(because), "{message}")
        }
        other => panic!("expected a refusal ({because}), got {other:?}"),
    }
}

/// A keyring whose rotations of `contexts` have committed.
fn ring_with(contexts: &[&str]) -> Keyring {
    let ring = Keyring::load(MasterKey::generate(), &[]).unwrap();
    for c in contexts {
        ring.rotate(c, &[]);
    }
    ring.batch_ended(true);
    ring
}

#[test]
fn a_sealed_value_opens_only_unmodified_and_under_its_own_key() {
    let ring = ring_with(&["c"]);
    let sealed = ring.seal("c", column::CONTEXT_DOC, b"the plan").unwrap();
    assert_eq!(&sealed[..3], MAGIC);
    assert_eq!(sealed_version(&sealed), Some(1));
    assert_eq!(
        ring.open("c", column::CONTEXT_DOC, &sealed).unwrap(),
        b"the plan"
    );
    // Every byte after the version is authenticated: the nonce, the ciphertext, the tag.
    for at in [7, 31, sealed.len() - 1] {
        let mut tampered = sealed.clone();
        tampered[at] ^= 0x01;
        refused(
            ring.open("c", column::CONTEXT_DOC, &tampered),
            "fails authentication",
        );
    }
    let mut other_version = sealed.clone();
    other_version[3..7].copy_from_slice(&2u32.to_be_bytes());
    refused(
        ring.open("c", column::CONTEXT_DOC, &other_version),
        "no data key version 2",
    );
    let stranger = ring_with(&["c"]);
    refused(
        stranger.open("c", column::CONTEXT_DOC, &sealed),
        "fails authentication",
    );
    let empty = Keyring::load(MasterKey::generate(), &[]).unwrap();
    refused(
        empty.open("c", column::CONTEXT_DOC, &sealed),
        "no data key version 1",
    );
}

/// The associated data binds the context, the key version and the column: a value moved to
/// another of any of them fails to open, although the key that opens it is at hand.
#[test]
fn a_value_swapped_between_columns_contexts_or_versions_fails_to_open() {
    let ring = ring_with(&["c", "d"]);
    let doc = ring.seal("c", column::CONTEXT_DOC, b"current").unwrap();
    for other in [
        column::VERSION_DOC,
        column::FIELD_STAMPS,
        column::PENDING_CONFLICT,
        column::CONFLICT_VALUES,
        column::CONFLICT_RESOLUTION,
    ] {
        refused(ring.open("c", other, &doc), "fails authentication");
    }
    refused(
        ring.open("d", column::CONTEXT_DOC, &doc),
        "fails authentication",
    );
    // Same key, other version number: give version 2 the same data key as version 1 and
    // relabel the value; the version bound into the associated data still refuses it.
    let v1 = ring.seal("c", column::VERSION_DOC, b"v1").unwrap();
    ring.rotate("c", &[]);
    ring.batch_ended(true);
    let mut relabelled = v1.clone();
    relabelled[3..7].copy_from_slice(&2u32.to_be_bytes());
    refused(
        ring.open("c", column::VERSION_DOC, &relabelled),
        "fails authentication",
    );
    // The value itself still opens where it belongs.
    assert_eq!(ring.open("c", column::VERSION_DOC, &v1).unwrap(), b"v1");
    // Event data is bound to its seq.
    let e = ring.seal_event(7, b"event");
    assert_eq!(ring.open_event(7, &e).unwrap(), b"event");
    refused(ring.open_event(8, &e), "fails authentication");
    refused(ring.open_event(7, b"plain event"), "is not sealed");
}

#[test]
fn once_a_context_has_a_key_an_unsealed_value_is_refused() {
    let ring = ring_with(&["c"]);
    // No key for `old`: written before encryption, it passes through.
    assert_eq!(
        ring.open("old", column::CONTEXT_DOC, b"plain").unwrap(),
        b"plain"
    );
    refused(
        ring.open("c", column::CONTEXT_DOC, b"plain"),
        "is not sealed",
    );
    // Short bytes with the magic are not a header either.
    refused(
        ring.open("c", column::CONTEXT_DOC, b"QE2\0\0"),
        "is not sealed",
    );
    // A first key that has not committed yet (the write sealing `old`'s rows is still open):
    // readers still see the committed plaintext rows; once it commits they are refused.
    ring.rotate("old", &[]);
    ring.write_ended(true);
    assert_eq!(
        ring.open("old", column::CONTEXT_DOC, b"plain").unwrap(),
        b"plain"
    );
    ring.batch_ended(true);
    refused(
        ring.open("old", column::CONTEXT_DOC, b"plain"),
        "is not sealed",
    );
}

/// Rows written before the associated data named the purpose and column (`QE1`): a wrapped
/// key and a value made exactly as the previous version made them still open.
#[test]
fn values_and_keys_sealed_with_the_older_header_stay_readable() {
    let master = MasterKey::generate();
    let dk = [42u8; 32];
    let legacy = |key: &[u8; 32], ad: Vec<u8>, plain: &[u8]| {
        let mut v = seal_with(key, &ad, 1, plain);
        v[..3].copy_from_slice(LEGACY_MAGIC);
        v
    };
    let row = WrappedKey {
        context_id: "x".into(),
        key_version: 1,
        holder: OPERATOR_HOLDER.into(),
        wrapped: legacy(&master.0, legacy_key_aad("x", 1, OPERATOR_HOLDER), &dk),
    };
    let ring = Keyring::load(master, &[row]).unwrap();
    let old = legacy(&dk, legacy_value_aad("x", 1), b"payload");
    assert_eq!(
        ring.open("x", column::CONTEXT_DOC, &old).unwrap(),
        b"payload"
    );
    // New values use the new header and the new associated data.
    let new = ring.seal("x", column::CONTEXT_DOC, b"payload").unwrap();
    assert_eq!(&new[..3], MAGIC);
    assert_eq!(
        ring.open("x", column::CONTEXT_DOC, &new).unwrap(),
        b"payload"
    );
}

#[test]
fn malformed_key_rows_are_errors_naming_context_and_version() {
    let ring = Keyring::load(MasterKey::generate(), &[]).unwrap();
    let rows = ring.rotate("plan", &[]);
    ring.batch_ended(true);
    let master = ring.master().clone();
    let good = rows[0].clone();
    let mut cases: Vec<(WrappedKey, &str)> = Vec::new();
    let mut short = good.clone();
    short.wrapped.truncate(10);
    cases.push((short, "has no sealed header or is short"));
    let mut no_header = good.clone();
    no_header.wrapped[..3].copy_from_slice(b"XYZ");
    cases.push((no_header, "has no sealed header"));
    let mut other = good.clone();
    other.key_version = 3;
    cases.push((other, "names version 1 inside"));
    for (row, because) in cases {
        let e = Keyring::load(master.clone(), &[row]).unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, StoreError::CorruptRow(_)), "{text}");
        assert!(text.contains(because) && text.contains("`plan`"), "{text}");
    }
    // A tag that does not verify: another master key, or a modified row.
    let mut modified = good.clone();
    let last = modified.wrapped.len() - 1;
    modified.wrapped[last] ^= 1;
    let e = Keyring::load(master.clone(), &[modified]).unwrap_err();
    assert!(e.to_string().contains("context `plan` (version 1)"), "{e}");
    Keyring::load(master, &[good]).unwrap();
}

/// A rotation seals its own write's values at once, other writes' only after the commit; a
/// rolled-back write or batch forgets it, and its version number is never reused.
#[test]
fn a_rotation_becomes_current_only_when_its_transaction_commits() {
    let ring = ring_with(&["c"]);
    // A write rotates, then rolls back: the next value is still sealed under version 1.
    ring.rotate("c", &[]);
    assert_eq!(
        sealed_version(&ring.seal("c", column::CONTEXT_DOC, b"x").unwrap()),
        Some(2)
    );
    ring.write_ended(false);
    assert_eq!(
        sealed_version(&ring.seal("c", column::CONTEXT_DOC, b"x").unwrap()),
        Some(1)
    );
    // A write rotates and is kept, then the batch's commit fails: forgotten too.
    ring.rotate("c", &[]);
    ring.write_ended(true);
    assert_eq!(
        sealed_version(&ring.seal("c", column::CONTEXT_DOC, b"x").unwrap()),
        Some(3),
        "later writes of the same batch use it (they commit or roll back with it)"
    );
    ring.batch_ended(false);
    let v1 = ring.seal("c", column::CONTEXT_DOC, b"x").unwrap();
    assert_eq!(sealed_version(&v1), Some(1));
    // A committed rotation: current for everyone.
    ring.rotate("c", &[]);
    ring.write_ended(true);
    ring.batch_ended(true);
    assert_eq!(
        sealed_version(&ring.seal("c", column::CONTEXT_DOC, b"x").unwrap()),
        Some(4)
    );
    assert_eq!(ring.open("c", column::CONTEXT_DOC, &v1).unwrap(), b"x");
}

#[test]
fn master_keys_are_64_hex_characters_or_32_raw_bytes() {
    let key = MasterKey::generate();
    assert_eq!(MasterKey::from_hex(&key.to_hex()).unwrap().0, key.0);
    let dir = tempfile::tempdir().unwrap();
    let hex_file = dir.path().join("hex");
    std::fs::write(&hex_file, format!("{}\n", key.to_hex())).unwrap();
    assert_eq!(MasterKey::from_file(&hex_file).unwrap().0, key.0);
    let raw_file = dir.path().join("raw");
    std::fs::write(&raw_file, key.0).unwrap();
    assert_eq!(MasterKey::from_file(&raw_file).unwrap().0, key.0);

    let short = &key.to_hex()[..62];
    let e = MasterKey::from_hex(short).unwrap_err();
    assert!(e.contains("31 bytes; a master key is 32 bytes"), "{e}");
    let e = MasterKey::from_hex(&"zz".repeat(32)).unwrap_err();
    assert!(e.contains("not hex"), "{e}");
    let raw_short = dir.path().join("raw-short");
    std::fs::write(&raw_short, [0xffu8; 31]).unwrap();
    let e = MasterKey::from_file(&raw_short).unwrap_err();
    assert!(e.contains("raw-short: neither 32 raw bytes nor hex"), "{e}");
    assert!(format!("{key:?}").contains("redacted"));
    assert!(!format!("{key:?}").contains(&key.to_hex()));
}

#[test]
fn seal_open_rotate_and_agent_copies() {
    let ring = Keyring::load(MasterKey::generate(), &[]).unwrap();
    let rows1 = ring.rotate("c", &["a".into(), "b".into()]);
    ring.batch_ended(true);
    let v1 = ring.seal("c", column::VERSION_DOC, b"secret one").unwrap();
    assert!(!v1.windows(6).any(|w| w == b"secret"));
    // Revoking b: rotate with only a.
    let rows2 = ring.rotate("c", &["a".into()]);
    ring.batch_ended(true);
    let v2 = ring.seal("c", column::VERSION_DOC, b"secret two").unwrap();
    let all: Vec<WrappedKey> = rows1.iter().chain(&rows2).cloned().collect();
    assert_eq!(ring.open_as("a", &all, "c", &v2).unwrap(), b"secret two");
    assert_eq!(ring.open_as("b", &all, "c", &v1).unwrap(), b"secret one");
    let e = ring.open_as("b", &all, "c", &v2).unwrap_err();
    assert!(e.contains("holds no key for version 2"), "{e}");
    // Reloading with the right key works; another key fails cleanly.
    let again = Keyring::load(ring.master().clone(), &all).unwrap();
    assert_eq!(
        again.open("c", column::VERSION_DOC, &v2).unwrap(),
        b"secret two"
    );
    let e = Keyring::load(MasterKey::generate(), &all).unwrap_err();
    assert!(e.to_string().contains("another master key"), "{e}");
}

/// Probe: a key file or a host-id file too large to be one is refused unread (a 1 GiB key
/// file used to be read whole, and hex-decoded, before its length was checked).
#[test]
fn a_key_file_or_host_id_larger_than_one_can_be_is_refused_unread() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    let hex = MasterKey::generate().to_hex();
    std::fs::write(&key, format!("{hex}\n")).unwrap();
    MasterKey::from_file(&key).unwrap();
    std::fs::write(&key, vec![b'a'; 1025]).unwrap();
    let e = MasterKey::from_file(&key).unwrap_err();
    assert!(e.contains("larger than 1024 bytes"), "{e}");

    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join(crate::store::HOST_ID_FILE), vec![b'0'; 1025]).unwrap();
    let e = crate::store::Store::open(crate::store::StoreConfig::at(&data)).unwrap_err();
    assert!(e.to_string().contains("larger than 1024 bytes"), "{e}");
}
