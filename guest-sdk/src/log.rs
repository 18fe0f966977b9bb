//! Structured logging into the host's tracing pipeline (WIT interface `log`).
//!
//! ```
//! use qi_guest_sdk::log;
//!
//! # fn demo(path: &str, files: usize) {
//! log::info!("scanning {path}");
//! // Fields go before a `;`, as `name = value` with any `Display` value.
//! log::debug!(path = path, files = files; "scanned {files} files");
//! log::log(log::Level::Warn, "no files", &[("path", path)]);
//! # }
//! ```
//!
//! The host bounds what an agent may log: long messages and fields are truncated and records past
//! the per-run log budget are dropped. Logging never fails from the agent's point of view.

use crate::wit::qi::agent::log::Field;
pub use crate::wit::qi::agent::log::Level;

/// Emits one record at `level` with `message` and structured `fields` (`(name, value)` pairs).
pub fn log(level: Level, message: &str, fields: &[(&str, &str)]) {
    let fields: Vec<Field> = fields
        .iter()
        .map(|(key, value)| Field {
            key: (*key).to_owned(),
            value: (*value).to_owned(),
        })
        .collect();
    crate::wit::qi::agent::log::log(level, message, &fields);
}

#[doc(hidden)]
#[macro_export]
macro_rules! __qi_log {
    ($level:ident, $($key:ident = $value:expr),+ ; $($format:tt)+) => {
        $crate::log::log(
            $crate::log::Level::$level,
            &::std::format!($($format)+),
            &[$((::std::stringify!($key), ::std::string::ToString::to_string(&$value).as_str())),+],
        )
    };
    ($level:ident, $($format:tt)+) => {
        $crate::log::log($crate::log::Level::$level, &::std::format!($($format)+), &[])
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __qi_log_trace {
    ($($args:tt)+) => { $crate::__qi_log!(Trace, $($args)+) };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __qi_log_debug {
    ($($args:tt)+) => { $crate::__qi_log!(Debug, $($args)+) };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __qi_log_info {
    ($($args:tt)+) => { $crate::__qi_log!(Info, $($args)+) };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __qi_log_warn {
    ($($args:tt)+) => { $crate::__qi_log!(Warn, $($args)+) };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __qi_log_error {
    ($($args:tt)+) => { $crate::__qi_log!(Error, $($args)+) };
}

/// Logs at [`Level::Trace`]: `trace!("text {x}")` or `trace!(key = value, ...; "text {x}")`.
#[doc(inline)]
pub use crate::__qi_log_trace as trace;

/// Logs at [`Level::Debug`]: `debug!("text {x}")` or `debug!(key = value, ...; "text {x}")`.
#[doc(inline)]
pub use crate::__qi_log_debug as debug;

/// Logs at [`Level::Info`]: `info!("text {x}")` or `info!(key = value, ...; "text {x}")`.
#[doc(inline)]
pub use crate::__qi_log_info as info;

/// Logs at [`Level::Warn`]: `warn!("text {x}")` or `warn!(key = value, ...; "text {x}")`.
#[doc(inline)]
pub use crate::__qi_log_warn as warn;

/// Logs at [`Level::Error`]: `error!("text {x}")` or `error!(key = value, ...; "text {x}")`.
#[doc(inline)]
pub use crate::__qi_log_error as error;
