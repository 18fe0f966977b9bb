//! Declared outputs and success criteria, checked on every attempt's output.

use super::*;

/// Declared outputs present and success criteria met.
pub(super) fn check_output(
    def: &crate::coord::manifest::SubtaskDef,
    out: &Value,
    duration_ms: u64,
) -> Result<(), String> {
    let missing: Vec<&str> = def
        .outputs
        .iter()
        .map(|o| o.name())
        .filter(|n| out.get(n).is_none())
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "the agent's output lacks declared output(s) {}",
            missing.join(", ")
        ));
    }
    for c in &def.success_criteria {
        check_criterion(c, out, duration_ms)?;
    }
    Ok(())
}

pub(super) fn check_criterion(
    c: &SuccessCriterion,
    out: &Value,
    duration_ms: u64,
) -> Result<(), String> {
    let at = || {
        c.measurement
            .as_deref()
            .and_then(|p| out.pointer(p))
            .cloned()
            .unwrap_or(Value::Null)
    };
    let threshold = c.threshold.unwrap_or(0.0);
    let ok = match c.criterion.as_str() {
        "outputs-present" => true,
        "max-duration-ms" => duration_ms as f64 <= threshold,
        "min-value" => at().as_f64().is_some_and(|v| v >= threshold),
        "max-value" => at().as_f64().is_some_and(|v| v <= threshold),
        "non-empty" => {
            !matches!(at(), Value::Null | Value::Bool(false))
                && at() != json!(0)
                && at() != json!("")
                && at() != json!([])
                && at() != json!({})
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "success criterion `{}` not met (measurement {}, threshold {}; took {duration_ms} ms)",
            c.criterion,
            c.measurement
                .as_deref()
                .map(|p| format!("{p} = {}", at()))
                .unwrap_or_else(|| "-".into()),
            threshold
        ))
    }
}
