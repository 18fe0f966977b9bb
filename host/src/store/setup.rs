//! Setting up a store's connections and directory at open: keys, the host id, the sealing of
//! plaintext events, connection pragmas and the authorizer.

use super::*;

/// Loads the data keys when the configuration has a master key; refuses an encrypted data
/// directory opened without one.
pub(super) fn open_keyring(
    conn: &Connection,
    config: &StoreConfig,
    blobs: BlobStore,
) -> Result<BlobStore, StoreError> {
    let mut stmt =
        conn.prepare("SELECT context_id, key_version, holder, wrapped FROM context_keys")?;
    let rows = stmt
        .query_map([], |r| {
            Ok(crypto::WrappedKey {
                context_id: r.get(0)?,
                key_version: r.get::<_, i64>(1)? as u32,
                holder: r.get(2)?,
                wrapped: r.get(3)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    match &config.master_key {
        Some(master) => Ok(blobs.with_keys(Arc::new(crypto::Keyring::load(
            master.clone(),
            &rows,
        )?))),
        None if !rows.is_empty() || has_sealed_events(conn)? => Err(StoreError::InvalidConfig {
            field: "master_key",
            message: "this data directory is encrypted: give its master key (--key-file FILE or QI_HOST_MASTER_KEY)".into(),
        }),
        None => Ok(blobs),
    }
}

/// The host id kept in `<data_dir>/host-id` ([`HOST_ID_FILE`]), created on first open (when
/// `create`; a read-only open of a directory without one gets a fresh id); a fresh one for an
/// in-memory store.
pub(super) fn load_host_id(data_dir: Option<&Path>, create: bool) -> Result<String, StoreError> {
    let fresh = hex::encode(crypto::random::<16>());
    let Some(dir) = data_dir else {
        return Ok(fresh);
    };
    let path = dir.join(HOST_ID_FILE);
    let read = |path: &Path| -> Result<Option<String>, StoreError> {
        // 32 hex characters: a huge file is refused unread.
        match crate::bounded_read::read_at_most(path, 1024) {
            Ok(bytes) => {
                let id = String::from_utf8_lossy(&bytes).trim().to_string();
                if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
                    Ok(Some(id))
                } else {
                    Err(StoreError::InvalidConfig {
                        field: "data_dir",
                        message: format!(
                            "{} does not hold a host id (32 hex characters); remove it to make a new one",
                            path.display()
                        ),
                    })
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                Err(StoreError::InvalidConfig {
                    field: "data_dir",
                    message: format!(
                        "{} does not hold a host id (32 hex characters; it is {e}); remove it to make a new one",
                        path.display()
                    ),
                })
            }
            Err(e) => Err(StoreError::io(path, e)),
        }
    };
    if let Some(id) = read(&path)? {
        return Ok(id);
    }
    if !create {
        return Ok(fresh);
    }
    // Written aside and linked into place, so that two processes opening the same new
    // directory agree on one id (the second link fails and reads the first).
    let temp = dir.join(format!(".{HOST_ID_FILE}-{}", std::process::id()));
    std::fs::write(&temp, format!("{fresh}\n")).map_err(|e| StoreError::io(&temp, e))?;
    let linked = std::fs::hard_link(&temp, &path);
    let _ = std::fs::remove_file(&temp);
    match linked {
        Ok(()) => Ok(fresh),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            read(&path)?.ok_or_else(|| StoreError::io(&path, e))
        }
        Err(e) => Err(StoreError::io(&path, e)),
    }
}

/// Whether some event's data is sealed (the directory was used with a master key even if no
/// context has a key yet).
fn has_sealed_events(conn: &Connection) -> Result<bool, StoreError> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM events WHERE substr(data, 1, 3) = X'514532' LIMIT 1",
            [],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

/// Events stored before encryption was enabled are sealed when the data directory is first
/// opened with a master key (one transaction), so that every event row is sealed from then on.
pub(super) fn seal_plaintext_events(
    conn: &mut Connection,
    keys: &crypto::Keyring,
) -> Result<(), StoreError> {
    const PLAIN: &str = "SELECT 1 FROM events WHERE substr(data, 1, 3) <> X'514532' LIMIT 1";
    // Usually none: check before taking the write lock.
    if conn.query_row(PLAIN, [], |_| Ok(())).optional()?.is_none() {
        return Ok(());
    }
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let rows: Vec<(i64, Vec<u8>)> = tx
        .prepare("SELECT seq, data FROM events WHERE substr(data, 1, 3) <> X'514532'")?
        .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))?
        .collect::<Result<_, _>>()?;
    let plain = rows
        .into_iter()
        .filter(|(_, data)| crypto::sealed_version(data).is_none());
    for (seq, data) in plain {
        tx.execute(
            "UPDATE events SET data = ?2 WHERE seq = ?1",
            rusqlite::params![seq, keys.seal_event(seq as u64, &data)],
        )?;
    }
    tx.commit()?;
    Ok(())
}

pub(super) fn configure_writer(conn: &Connection, config: &StoreConfig) -> Result<(), StoreError> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    if config.data_dir.is_some() {
        let mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::WalUnavailable { mode });
        }
    }
    conn.pragma_update(None, "synchronous", config.durability.synchronous())?;
    conn.pragma_update(None, "foreign_keys", true)?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.pragma_update(None, "wal_autocheckpoint", config.checkpoint_pages())?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(())
}

/// The read pool: [`READ_CONNECTIONS`] connections refusing writes. Those of a read-only
/// store (`owned` false) are opened read-only and never checkpoint on close: the last
/// connection to close would otherwise copy the WAL into the database and remove it, a
/// write to a directory the command does not own.
pub(super) fn open_readers(db_path: &str, owned: bool) -> Result<Vec<Connection>, StoreError> {
    let open_err = |source| StoreError::Open {
        path: db_path.to_string(),
        source,
    };
    let flags = if owned {
        OpenFlags::default()
    } else {
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let mut readers = Vec::with_capacity(READ_CONNECTIONS);
    for _ in 0..READ_CONNECTIONS {
        let mut reader = Connection::open_with_flags(db_path, flags).map_err(open_err)?;
        if !owned {
            reader
                .set_db_config(
                    rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
                    true,
                )
                .map_err(open_err)?;
        }
        configure_reader(&reader).map_err(open_err)?;
        install_authorizer(&mut reader, None).map_err(open_err)?;
        readers.push(reader);
    }
    Ok(readers)
}

fn configure_reader(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "query_only", true)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(())
}

/// Refuses `ATTACH`/`DETACH` everywhere. On the write connection (`control` is `Some`) also
/// refuses transaction control and the writer's savepoint name unless the writer itself is
/// issuing them, so a write closure cannot commit or end the batch it is part of.
pub(super) fn install_authorizer(
    conn: &mut Connection,
    control: Option<ControlFlag>,
) -> rusqlite::Result<()> {
    conn.authorizer(Some(move |ctx: AuthContext<'_>| match ctx.action {
        AuthAction::Attach { .. } | AuthAction::Detach { .. } => Authorization::Deny,
        AuthAction::Transaction { .. } => match &control {
            Some(flag) if !flag.load(Ordering::Relaxed) => Authorization::Deny,
            _ => Authorization::Allow,
        },
        AuthAction::Savepoint { savepoint_name, .. }
            if savepoint_name.eq_ignore_ascii_case(writer::SAVEPOINT) =>
        {
            match &control {
                Some(flag) if !flag.load(Ordering::Relaxed) => Authorization::Deny,
                _ => Authorization::Allow,
            }
        }
        _ => Authorization::Allow,
    }))
}
