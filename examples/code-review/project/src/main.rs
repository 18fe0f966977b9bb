//! Inventory service: keeps stock levels per warehouse and answers queries over HTTP.

mod api;
mod store;
mod util;

use std::env;

/// Entry point: reads the configuration from the environment and starts the server.
fn main() {
    let port: u16 = env::var("PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(8080);
    // TODO: read the warehouse list from a file instead of hard-coding it.
    let warehouses = vec!["north", "south", "east"];
    let store = store::Store::new(&warehouses);
    println!("listening on {port} with {} warehouses", warehouses.len());
    api::routes::serve(port, store);
}
