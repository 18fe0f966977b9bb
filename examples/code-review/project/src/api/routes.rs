//! Routing: maps request lines to handlers.

use super::handlers;
use crate::store::Store;

/// Serves until the process is stopped.
pub fn serve(port: u16, mut store: Store) {
    let _ = port;
    // XXX: this loop reads from stdin to keep the sample free of networking code.
    let stdin = std::io::stdin();
    let mut line = String::new();
    while stdin.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let reply = match parts.as_slice() {
            ["GET", "/health"] => handlers::health().to_string(),
            ["GET", "/stock", w, s] => handlers::get_stock(&store, w, s),
            ["POST", "/stock", w, s, n] => handlers::adjust_stock(&mut store, w, s, n).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}")),
            ["GET", "/total", s] => handlers::total_stock(&store, s),
            _ => "{\"error\":\"unknown route\"}".to_string(),
        };
        println!("{reply}");
        line.clear();
    }
}
