use crate::store::Store;

pub fn get_stock(store: &Store, warehouse: &str, sku: &str) -> String {
    format!("{{\"warehouse\":\"{warehouse}\",\"sku\":\"{sku}\",\"stock\":{}}}", store.get(warehouse, sku))
}

pub fn adjust_stock(store: &mut Store, warehouse: &str, sku: &str, amount: &str) -> Result<String, String> {
    // TODO: validate the warehouse name against the configured list.
    // TODO: audit every adjustment with the caller's identity.
    let amount: i64 = amount.parse().map_err(|e| format!("amount `{amount}` is not a whole number: {e}"))?;
    let now = store.adjust(warehouse, sku, amount);
    Ok(format!("{{\"warehouse\":\"{warehouse}\",\"sku\":\"{sku}\",\"stock\":{now}}}"))
}

pub fn total_stock(store: &Store, sku: &str) -> String {
    format!("{{\"sku\":\"{sku}\",\"total\":{}}}", store.total(sku))
}

pub fn health() -> &'static str {
    "ok"
}
