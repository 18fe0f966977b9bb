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
//! // In a test suite: `mod hello { ... } mod file_stats { ... }` and then
//! // `foreach_guest!(assert_test_exists)` with a macro that does `use self::$name as _;`
//! // fails to compile when a guest has no test module. Here, just list them:
//! let mut names = Vec::new();
//! macro_rules! collect {
//!     ($name:ident) => {
//!         names.push(stringify!($name));
//!     };
//! }
//! qi_guest_artifacts::foreach_guest!(collect);
//! assert!(names.contains(&"file_stats"));
//! assert_eq!(names.len(), qi_guest_artifacts::ALL_GUESTS.len());
//! ```
//!
//! Building needs the guest target: `rustup target add wasm32-wasip2`.

include!(concat!(env!("OUT_DIR"), "/guests.rs"));
