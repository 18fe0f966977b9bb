//! Value encoding (MessagePack) and [`StoredDoc`], a document placed inline or in the blob tier.

use super::{BlobStore, StoreError};
use serde_json::Value;

/// Encodes a JSON value as MessagePack: integers stay integers (`u64` and `i64` exactly),
/// floats stay `f64`, maps keep their string keys.
pub fn encode_value(value: &Value) -> Vec<u8> {
    // Serializing a `serde_json::Value` cannot fail: every key is a string and every number
    // is representable in MessagePack. The fallback only guards against that changing.
    rmp_serde::to_vec(value)
        .unwrap_or_else(|e| panic!("a serde_json::Value always encodes as MessagePack: {e}"))
}

/// Decodes MessagePack produced by [`encode_value`].
pub fn decode_value(bytes: &[u8]) -> Result<Value, StoreError> {
    rmp_serde::from_slice(bytes).map_err(|e| StoreError::Decode(e.to_string()))
}

/// A document as stored in a row's `doc` / `doc_blob` column pair (tables `contexts` and
/// `versions`): its MessagePack encoding inline when that is at most the blob threshold,
/// otherwise the SHA-256 of the encoding, which names a file in the blob tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredDoc {
    /// The encoded document, for the `doc` column (`doc_blob` is NULL).
    Inline(Vec<u8>),
    /// SHA-256 (hex) of the encoded document in the blob tier, for the `doc_blob` column
    /// (`doc` is NULL).
    Blob(String),
}

impl StoredDoc {
    /// Encodes `value` and places it: inline if the encoding is at most
    /// [`BlobStore::threshold`] bytes, else written (durably, idempotently) to the blob tier.
    /// Call it inside the write that stores the row, so the blob is on disk before the row
    /// that names it commits.
    pub fn put(blobs: &BlobStore, value: &Value) -> Result<StoredDoc, StoreError> {
        Self::put_bytes(blobs, encode_value(value))
    }

    /// [`put`](Self::put) for bytes already encoded (and possibly sealed).
    pub fn put_bytes(blobs: &BlobStore, bytes: Vec<u8>) -> Result<StoredDoc, StoreError> {
        if bytes.len() <= blobs.threshold() {
            Ok(StoredDoc::Inline(bytes))
        } else {
            Ok(StoredDoc::Blob(blobs.put(&bytes)?))
        }
    }

    /// The value to bind to the `doc` column.
    pub fn doc_column(&self) -> Option<&[u8]> {
        match self {
            StoredDoc::Inline(bytes) => Some(bytes),
            StoredDoc::Blob(_) => None,
        }
    }

    /// The value to bind to the `doc_blob` column.
    pub fn blob_column(&self) -> Option<&str> {
        match self {
            StoredDoc::Inline(_) => None,
            StoredDoc::Blob(hash) => Some(hash),
        }
    }

    /// Rebuilds from the two columns; `None` when both are NULL (a row without a document,
    /// such as a delete in `versions`).
    pub fn from_columns(
        doc: Option<Vec<u8>>,
        doc_blob: Option<String>,
    ) -> Result<Option<StoredDoc>, StoreError> {
        match (doc, doc_blob) {
            (None, None) => Ok(None),
            (Some(bytes), None) => Ok(Some(StoredDoc::Inline(bytes))),
            (None, Some(hash)) => Ok(Some(StoredDoc::Blob(hash))),
            (Some(_), Some(hash)) => Err(StoreError::CorruptRow(format!(
                "both `doc` and `doc_blob` ({hash}) are set"
            ))),
        }
    }

    /// Reads the `doc` and `doc_blob` columns of a result row.
    pub fn from_row(
        row: &rusqlite::Row<'_>,
        doc_column: &str,
        blob_column: &str,
    ) -> Result<Option<StoredDoc>, StoreError> {
        Self::from_columns(row.get(doc_column)?, row.get(blob_column)?)
    }

    /// The stored bytes (reading the blob tier if they live there), not decoded.
    pub fn load_bytes(&self, blobs: &BlobStore) -> Result<Vec<u8>, StoreError> {
        match self {
            StoredDoc::Inline(bytes) => Ok(bytes.clone()),
            StoredDoc::Blob(hash) => blobs.get(hash),
        }
    }

    /// Loads and decodes the document (reading the blob tier if it lives there).
    pub fn load(&self, blobs: &BlobStore) -> Result<Value, StoreError> {
        match self {
            StoredDoc::Inline(bytes) => decode_value(bytes),
            StoredDoc::Blob(hash) => decode_value(&blobs.get(hash)?),
        }
    }
}
