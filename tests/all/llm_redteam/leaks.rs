//! The key must never reach the sandbox.

use super::*;
use qi_llm_test_server::Reply;

/// FINDING: the host cuts a provider's error text to 512 bytes before it scrubs the key, so a
/// key that straddles the cut reaches the guest's error, and the guest's log, as a prefix.
/// (A provider whose error echoes request text before the credentials lets the guest choose
/// where the cut falls, and learn the key up to its last byte.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_cut_by_the_hosts_error_cap_reaches_the_guest_and_its_log() {
    let rig = Rig::start(|_| {}).await;
    let body = format!("{} credentials were: Bearer {KEY}", "e".repeat(473));
    rig.server.push(Reply::status(401, body));
    let report = rig
        .run(
            llm_spec(&["p/*"]),
            json!([{"model": "p/m", "prompt": "hi"}]),
        )
        .await;
    let r = &results(&report)[0];
    assert_eq!(r["ok"], false, "{r}");
    let seen = format!("{}\n{:?}", r, report.logs);
    assert_eq!(
        key_prefix_in(&seen),
        None,
        "a prefix of the key reached the guest: {}",
        r["message"]
    );
}
