//! `aggregation` points: contributions combined by the reducer.

use super::*;

pub(super) fn reduce(reducer: Reducer, values: &[(&str, &Value)]) -> Value {
    match reducer {
        Reducer::Collect => Value::Object(
            values
                .iter()
                .map(|(p, v)| (p.to_string(), (*v).clone()))
                .collect(),
        ),
        Reducer::Concat => Value::Array(
            values
                .iter()
                .flat_map(|(_, v)| match v {
                    Value::Array(items) => items.clone(),
                    other => vec![(*other).clone()],
                })
                .collect(),
        ),
        Reducer::Sum => values
            .iter()
            .fold(Value::Null, |acc, (_, v)| sum_values(acc, v)),
        Reducer::Merge => values.iter().fold(Value::Null, |mut acc, (_, v)| {
            merge_into(&mut acc, v);
            acc
        }),
    }
}

/// Numbers add; objects add field-wise; anything else is kept from the first contribution.
pub(super) fn sum_values(acc: Value, v: &Value) -> Value {
    match (acc, v) {
        (Value::Null, v) => v.clone(),
        (Value::Number(a), Value::Number(b)) => match (a.as_i64(), b.as_i64()) {
            (Some(x), Some(y)) => json!(x.saturating_add(y)),
            _ => json!(a.as_f64().unwrap_or(0.0) + b.as_f64().unwrap_or(0.0)),
        },
        (Value::Object(mut a), Value::Object(b)) => {
            for (k, bv) in b {
                let cur = a.remove(k).unwrap_or(Value::Null);
                a.insert(k.clone(), sum_values(cur, bv));
            }
            Value::Object(a)
        }
        (acc, _) => acc,
    }
}

pub(super) fn merge_into(acc: &mut Value, v: &Value) {
    match (acc, v) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, bv) in b {
                merge_into(a.entry(k.clone()).or_insert(Value::Null), bv);
            }
        }
        (acc, v) => *acc = v.clone(),
    }
}
