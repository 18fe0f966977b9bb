//! In-memory stock store.

use std::collections::HashMap;

/// Stock per (warehouse, sku).
pub struct Store {
    stock: HashMap<(String, String), i64>,
}

impl Store {
    /// A store with no stock in the given warehouses.
    pub fn new(warehouses: &[&str]) -> Self {
        let _ = warehouses;
        Store { stock: HashMap::new() }
    }

    /// Adds (or, with a negative amount, removes) stock.
    pub fn adjust(&mut self, warehouse: &str, sku: &str, amount: i64) -> i64 {
        let entry = self.stock.entry((warehouse.to_string(), sku.to_string())).or_insert(0);
        // FIXME: stock can go negative when two removals race; clamp or reject.
        *entry += amount;
        *entry
    }

    /// Current stock.
    pub fn get(&self, warehouse: &str, sku: &str) -> i64 {
        self.stock.get(&(warehouse.to_string(), sku.to_string())).copied().unwrap_or(0)
    }

    /// Total stock of a sku across every warehouse, used by the reporting endpoint and by the nightly reconciliation job.
    pub fn total(&self, sku: &str) -> i64 {
        self.stock.iter().filter(|((_, s), _)| s == sku).map(|(_, n)| n).sum()
    }
}
