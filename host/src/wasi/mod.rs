//! What qi-host puts between guests and WASI: [`filesystem`] counts every operation and gates
//! every path.

pub mod filesystem;
