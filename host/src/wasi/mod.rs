//! What qi-host puts between guests and WASI: [`filesystem`] counts every operation and gates
//! every path; [`sockets`] holds every socket use and name lookup to the network allow-list,
//! counts and audits them, and keeps sockets within the handle cap.

pub mod filesystem;
pub mod sockets;
