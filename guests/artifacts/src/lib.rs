//! Paths of the bundled guest agents (`guests/*`), compiled from source for `wasm32-wasip2` by
//! this crate's build script. Nothing is checked in: building this crate builds the guests.
//!
//! - one `<NAME>_COMPONENT` constant per guest, e.g. [`HELLO_COMPONENT`], holding the absolute
//!   path of its component;
//! - [`ALL_GUESTS`], every guest as `(name, path)`;
//! - [`foreach_guest!`], which invokes a macro once per guest with its snake_case name, so a test
//!   suite can require a test module per guest at compile time:
//!
//! ```
//! mod hello {}
//! mod file_stats {}
//! // ... one module per guest
//! # mod tool_user {} mod sleeper {} mod spin_forever {} mod memory_hog {} mod stack_overflow {}
//! # mod fs_escape {} mod net_probe {} mod tool_spammer {} mod panicker {} mod huge_output {}
//!
//! macro_rules! assert_test_exists {
//!     ($name:ident) => {
//!         #[allow(unused_imports)]
//!         use self::$name as _;
//!     };
//! }
//! qi_guest_artifacts::foreach_guest!(assert_test_exists);
//! # fn main() {}
//! ```
//!
//! Building needs the guest target: `rustup target add wasm32-wasip2`.

include!(concat!(env!("OUT_DIR"), "/guests.rs"));
