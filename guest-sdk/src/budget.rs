//! What is left of the agent's limits (WIT interface `budget`), so that a well-behaved agent can
//! stop before the host stops it.
//!
//! ```
//! # fn demo() {
//! if qi_guest_sdk::budget::remaining().tool_calls == 0 {
//!     // wrap up with what we have instead of being refused
//! }
//! # }
//! ```

pub use crate::wit::qi::agent::budget::Remaining;

/// Returns the remaining budget at the moment of the call. Counts never go negative.
pub fn remaining() -> Remaining {
    crate::wit::qi::agent::budget::get()
}
