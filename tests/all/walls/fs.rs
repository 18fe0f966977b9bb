//! `hostile` guest, `fs.*` modes.

#[allow(unused_imports)]
use crate::common::*;
