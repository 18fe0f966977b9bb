//! `hostile` guest, `net.*` modes.

#[allow(unused_imports)]
use crate::common::*;
