//! Integration tests: every bundled guest through the real host.
//!
//! One test binary (linked once); the host, its engine and its compiled components are shared
//! by all tests (see `common`).

mod cli;
mod cli_state;
mod cluster;
mod common;
mod context;
mod coord;
mod encryption;
mod encryption_events;
mod encryption_keys;
mod encryption_sync;
mod guests;
mod isolation;
mod lifecycle;
mod limits;
mod llm;
mod llm_redteam;
mod progress_tty;
mod python;
mod runtime_race;
mod security;
mod serve;
mod validation;
mod walls;
