//! `qi-host schema`: the JSON Schemas of what the CLI prints with `--json`, generated from the
//! types themselves (field docs become descriptions, so every metric's formula is there).

use crate::cli::SchemaKind;

/// The schema of `kind`, pretty-printed.
pub fn schema_text(kind: SchemaKind) -> String {
    let schema = match kind {
        SchemaKind::RunReport => schemars::schema_for!(crate::coord::RunReport),
    };
    serde_json::to_string_pretty(&schema).expect("a schema serializes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn the_run_report_schema_names_every_metric_with_its_formula() {
        let schema: Value = serde_json::from_str(&schema_text(SchemaKind::RunReport)).unwrap();
        let metrics = &schema["$defs"]["CoordinationMetrics"]["properties"];
        let efficiency = metrics["coordinationEfficiency"]["description"]
            .as_str()
            .unwrap();
        assert!(
            efficiency.contains("time in sync calls") && efficiency.contains("Not clamped"),
            "{efficiency}"
        );
        let overhead = metrics["communicationOverhead"]["description"]
            .as_str()
            .unwrap();
        assert!(overhead.contains("committing"), "{overhead}");
        // Top-level keys as `--json` prints them.
        let top = schema["properties"].as_object().unwrap();
        for key in ["coordinationId", "results", "metrics", "synchronization"] {
            assert!(top.contains_key(key), "{key} missing from {top:?}");
        }
    }
}
