//! `compute`: the checksums agree with the same loops run natively.

use super::*;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
const STRIDE: usize = 257;

/// The guest's `cpu` kind, natively.
fn cpu(iterations: u64) -> u64 {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut h = FNV_OFFSET;
    for _ in 0..iterations {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        h = (h ^ x).wrapping_mul(FNV_PRIME);
    }
    h
}

/// The guest's `memory` kind, natively.
fn memory(iterations: u64, bytes: usize) -> u64 {
    let mut buf: Vec<u8> = (0..bytes).map(|i| i as u8).collect();
    for pass in 0..iterations {
        let salt = (pass as u8) ^ 0x5a;
        for start in 0..STRIDE.min(bytes) {
            for i in (start..bytes).step_by(STRIDE) {
                buf[i] = buf[i].wrapping_mul(31).wrapping_add(salt ^ i as u8);
            }
        }
    }
    buf.iter().fold(FNV_OFFSET, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(FNV_PRIME)
    })
}

#[tokio::test]
async fn cpu_checksum_is_exact() {
    let report = run(
        COMPUTE_COMPONENT,
        spec(),
        json!({"kind": "cpu", "iterations": 100_000}),
    )
    .await;
    let out = ok(&report);
    assert_eq!(out["checksum"], cpu(100_000).to_string(), "{out}");
    assert!(report.usage.fuel_consumed > 100_000, "{:?}", report.usage);
}

#[tokio::test]
async fn memory_checksum_is_exact() {
    let input = json!({"kind": "memory", "iterations": 3, "bytes": 100_000});
    let report = run(COMPUTE_COMPONENT, spec(), input).await;
    let out = ok(&report);
    assert_eq!(out["checksum"], memory(3, 100_000).to_string(), "{out}");
    assert_eq!(out["bytes"], 100_000);

    let report = run(
        COMPUTE_COMPONENT,
        spec(),
        json!({"kind": "memory", "iterations": 1}),
    )
    .await;
    let out = ok(&report);
    assert_eq!(out["checksum"], memory(1, 1 << 20).to_string(), "{out}");
    assert!(
        report.usage.peak_memory_bytes >= 1 << 20,
        "{:?}",
        report.usage
    );
}

#[tokio::test]
async fn unknown_kind_is_invalid_input() {
    let report = run(
        COMPUTE_COMPONENT,
        spec(),
        json!({"kind": "gpu", "iterations": 1}),
    )
    .await;
    match &report.failure {
        Some(AgentFailure::AgentError { error_kind, .. }) => {
            assert_eq!(error_kind, "invalid-input")
        }
        other => panic!("expected invalid-input, got {other:?}"),
    }
}
