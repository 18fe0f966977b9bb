//! `hostile` guest, `host.*` modes.

#[allow(unused_imports)]
use crate::common::*;
