//! README: "every attempt runs in a fresh agent instance". The worker counts the runs of its
//! own instance in a static (`instance_runs`); a retried attempt that reused the failed
//! attempt's instance would report 2.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_attempt_runs_in_a_fresh_instance() {
    let h = harness().await;
    let toml = header("hybrid", "retry-cascade", "")
        + &one("t1", None, r#"[{ fail_before_attempt = 2 }]"#, "");
    let (r, _) = h.run(&toml).await;
    assert!(r.success, "{r:#?}");
    let t = result(&r, "t1");
    assert_eq!(t.attempts.len(), 2, "{r:#?}");
    let out = t.output.as_ref().expect("the retry's output");
    assert_eq!(out["attempt"], 2);
    assert_eq!(
        out["instance_runs"], 1,
        "the retry ran in the failed attempt's instance"
    );
}
