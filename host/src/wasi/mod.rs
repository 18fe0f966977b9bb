//! What qi-host puts between guests and WASI: [`filesystem`] counts every operation, gates
//! every path, keeps links inside their mount and charges disk and file quotas; [`sockets`] holds every socket use and name lookup to the network allow-list,
//! counts and audits them, and keeps sockets within the handle cap.

pub mod filesystem;
pub mod sockets;
