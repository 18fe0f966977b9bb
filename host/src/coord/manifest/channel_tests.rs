//! `[[strategy.channels]]`: every key refused naming it, every bound a pair.

use super::*;
use crate::coord::channels::def::*;

fn manifest(strategy: &str, channel: &str) -> String {
    format!(
        r#"
[task]
id = "t"

[strategy]
type = "hybrid"
{strategy}

[[strategy.channels]]
id = "c"
producers = ["p"]
consumers = ["q"]
{channel}

[agents.worker]
component = "guest:worker"

[[subtasks]]
id = "p"

[[subtasks]]
id = "q"
"#
    )
}

fn check(text: &str) -> Result<Manifest, String> {
    let path = Path::new("m.toml");
    let m = Manifest::parse(text, path).map_err(|e| e.to_string())?;
    m.check(text, path).map_err(|e| e.to_string())?;
    Ok(m)
}

#[test]
fn a_plain_channel_takes_the_protocol_and_the_defaults() {
    let m = check(&manifest("communicationProtocol = \"direct\"", "")).unwrap();
    let c = &m.strategy.channels[0];
    assert_eq!(
        c.kind_or(m.strategy.communication_protocol),
        CommunicationProtocol::Direct
    );
    assert_eq!(c.max_message_bytes, DEFAULT_MESSAGE_BYTES);
    assert_eq!(c.max_depth, DEFAULT_DEPTH);
    assert_eq!(m.strategy.max_channel_bytes, DEFAULT_CHANNEL_BYTES);
}

#[test]
fn each_bound_is_a_pair_named_by_its_key() {
    let queue = "type = \"message-queue\"\n";
    let cases: Vec<(&str, String, String, &str)> = vec![
        (
            "strategy.channels[0].maxMessageBytes",
            format!("maxMessageBytes = {MAX_MESSAGE_BYTES}"),
            format!("maxMessageBytes = {}", MAX_MESSAGE_BYTES + 1),
            "",
        ),
        (
            "strategy.channels[0].maxMessageBytes",
            "maxMessageBytes = 1".into(),
            "maxMessageBytes = 0".into(),
            "",
        ),
        (
            "strategy.channels[0].maxDepth",
            format!("maxDepth = {MAX_DEPTH}"),
            format!("maxDepth = {}", MAX_DEPTH + 1),
            "",
        ),
        (
            "strategy.channels[0].maxDepth",
            "maxDepth = 1".into(),
            "maxDepth = 0".into(),
            "",
        ),
        (
            "strategy.channels[0].ackTimeoutMs",
            format!("{queue}ackTimeoutMs = {MAX_ACK_TIMEOUT_MS}"),
            format!("{queue}ackTimeoutMs = {}", MAX_ACK_TIMEOUT_MS + 1),
            "",
        ),
        (
            "strategy.channels[0].ackTimeoutMs",
            format!("{queue}ackTimeoutMs = {MIN_ACK_TIMEOUT_MS}"),
            format!("{queue}ackTimeoutMs = {}", MIN_ACK_TIMEOUT_MS - 1),
            "",
        ),
        (
            "strategy.channels[0].maxDeliveries",
            format!("{queue}maxDeliveries = {MAX_DELIVERIES}"),
            format!("{queue}maxDeliveries = {}", MAX_DELIVERIES + 1),
            "",
        ),
        (
            "strategy.channels[0].maxDeliveries",
            format!("{queue}maxDeliveries = 1"),
            format!("{queue}maxDeliveries = 0"),
            "",
        ),
        (
            "strategy.maxChannelBytes",
            String::new(),
            String::new(),
            "maxChannelBytes",
        ),
    ];
    for (key, inside, past, strategy_key) in cases {
        let (inside, past) = if strategy_key.is_empty() {
            (manifest("", &inside), manifest("", &past))
        } else {
            (
                manifest(&format!("{strategy_key} = {MAX_CHANNEL_BYTES}"), ""),
                manifest(&format!("{strategy_key} = {}", MAX_CHANNEL_BYTES + 1), ""),
            )
        };
        check(&inside).unwrap_or_else(|e| panic!("{key}: just inside is refused: {e}"));
        let e = check(&past).expect_err(key);
        assert!(
            e.contains(key) && e.contains("it must be from"),
            "{key}: {e}"
        );
    }
    check(&manifest("maxChannelBytes = 1024", "")).unwrap();
    let e = check(&manifest("maxChannelBytes = 1023", "")).unwrap_err();
    assert!(e.contains("strategy.maxChannelBytes"), "{e}");
}

#[test]
fn each_wrong_key_is_named_with_what_is_wrong() {
    for (strategy, channel, key, why) in [
        (
            "",
            "type = \"event-driven\"\nackTimeoutMs = 100",
            "strategy.channels[0].ackTimeoutMs",
            "only a `message-queue`",
        ),
        (
            "",
            "type = \"direct\"\nmaxDeliveries = 2",
            "strategy.channels[0].maxDeliveries",
            "only a `message-queue`",
        ),
        (
            "",
            "type = \"carrier-pigeon\"",
            "m.toml:13",
            "expected one of `direct`, `message-queue`, `event-driven`",
        ),
        ("", "color = \"red\"", "color", "unknown field"),
    ] {
        let e = check(&manifest(strategy, channel)).unwrap_err();
        assert!(e.contains(key) && e.contains(why), "{channel}: {e}");
    }
    let base = manifest("", "");
    for (from, to, key, why) in [
        (
            "producers = [\"p\"]",
            "producers = [\"ghost\"]",
            "strategy.channels[0].producers",
            "no subtask `ghost`",
        ),
        (
            "producers = [\"p\"]",
            "producers = []",
            "strategy.channels[0].producers",
            "list the subtasks that send",
        ),
        (
            "consumers = [\"q\"]",
            "consumers = [\"q\", \"q\"]",
            "strategy.channels[0].consumers",
            "listed twice",
        ),
        (
            "consumers = [\"q\"]",
            "consumers = []",
            "strategy.channels[0].consumers",
            "list the subtasks that receive",
        ),
        (
            "id = \"c\"",
            "id = \"a b\"",
            "strategy.channels[0].id",
            "not a usable id",
        ),
    ] {
        let e = check(&base.replace(from, to)).unwrap_err();
        assert!(e.contains(key) && e.contains(why), "{to}: {e}");
    }
    let twice = base.replace(
        "[agents.worker]",
        "[[strategy.channels]]\nid = \"c\"\nproducers = [\"p\"]\nconsumers = [\"q\"]\n\n[agents.worker]",
    );
    let e = check(&twice).unwrap_err();
    assert!(
        e.contains("strategy.channels[1].id") && e.contains("declared twice"),
        "{e}"
    );
}

#[test]
fn channel_counts_are_bounded() {
    let with = |n: usize| {
        let mut text = manifest("", "");
        for i in 1..n {
            text = text.replace(
                "[agents.worker]",
                &format!("[[strategy.channels]]\nid = \"c{i}\"\nproducers = [\"p\"]\nconsumers = [\"q\"]\n\n[agents.worker]"),
            );
        }
        text
    };
    check(&with(MAX_CHANNELS)).expect("the most channels is accepted");
    let e = check(&with(MAX_CHANNELS + 1)).unwrap_err();
    assert!(
        e.contains("strategy.channels") && e.contains("1000 entries"),
        "{e}"
    );
}

#[test]
fn producers_and_consumers_are_bounded_over_all_channels() {
    // 1,000 channels of 50 producers and 50 consumers: the bound exactly; one more consumer
    // on the last is past it.
    let names = |r: std::ops::Range<usize>| {
        r.map(|i| format!("\"x{i}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let with = |last_consumers: usize| {
        let mut text = String::from("[task]\nid = \"t\"\n\n[strategy]\ntype = \"hybrid\"\n");
        for i in 0..MAX_CHANNELS {
            let consumers = if i + 1 == MAX_CHANNELS {
                last_consumers
            } else {
                50
            };
            text += &format!(
                "\n[[strategy.channels]]\nid = \"c{i}\"\nproducers = [{}]\nconsumers = [{}]\n",
                names(0..50),
                names(50..50 + consumers)
            );
        }
        text += "\n[agents.worker]\ncomponent = \"guest:worker\"\n";
        for i in 0..101 {
            text += &format!("\n[[subtasks]]\nid = \"x{i}\"\n");
        }
        text
    };
    check(&with(50)).expect("the bound is accepted");
    let e = check(&with(51)).unwrap_err();
    assert!(
        e.contains("strategy.channels[*].producers") && e.contains("100001 entries"),
        "{e}"
    );
}
