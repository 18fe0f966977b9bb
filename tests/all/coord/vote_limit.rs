//! The vote limit of `sync.vote` (README's argument table: a choice is at most 200 bytes),
//! as a pair inside one decision point: two 200-byte votes decide, a 201-byte vote is refused
//! with the limit named and its voter counts as absent.

use super::*;
use qi_host::interfaces::limits::MAX_VOTE_BYTES;

fn vote(choice: &str) -> String {
    format!(r#"[{{ vote = {{ point = "pt", choice = "{choice}" }} }}]"#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vote_of_200_bytes_counts_and_one_of_201_is_refused_naming_the_limit() {
    assert_eq!(MAX_VOTE_BYTES, 200, "README's table says 200 bytes");
    let h = harness().await;
    let inside = "a".repeat(MAX_VOTE_BYTES);
    let past = "b".repeat(MAX_VOTE_BYTES + 1);
    let toml = point_run(
        &point("decision", "\"majority-complete\"", "", "wait", ""),
        [&vote(&inside), &vote(&inside), &vote(&past)],
    );
    let (r, _) = h.run(&toml).await;
    for id in ["p1", "p2"] {
        let o = outcome(&r, id);
        assert_eq!(o["result"]["decision"], inside.as_str(), "{id}: {o}");
    }
    assert_eq!(state(&r, "p3"), SubtaskState::Failed, "{r:#?}");
    let error = result(&r, "p3").error.clone().unwrap_or_default();
    assert!(
        error.contains("sync.vote: `choice` is 201 bytes; the limit is 200 bytes"),
        "{error}"
    );
}
