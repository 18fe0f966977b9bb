//! [`Manifest::check_channels`]: the `[[strategy.channels]]` of a manifest.

use super::*;
use crate::coord::channels::def::*;

impl Manifest {
    /// Checks every channel: a usable, unique id; producers and consumers that are subtasks,
    /// each listed once; queue-only keys only on queues; every bound. Errors name the key.
    pub(super) fn check_channels(&self, text: &str, path: &Path) -> Result<(), Error> {
        let err = |key: String, needle: Option<&str>, msg: String| {
            manifest_error(text, path, key, needle, msg)
        };
        let s = &self.strategy;
        if s.channels.len() > MAX_CHANNELS {
            return Err(err(
                "strategy.channels".into(),
                Some("channels"),
                format!(
                    "is {} entries; the most a manifest may set is {MAX_CHANNELS} entries",
                    s.channels.len()
                ),
            ));
        }
        let members = s
            .channels
            .iter()
            .map(|c| c.producers.len().saturating_add(c.consumers.len()))
            .fold(0, usize::saturating_add);
        if members > MAX_CHANNEL_MEMBERS {
            return Err(err(
                "strategy.channels[*].producers".into(),
                Some("producers"),
                format!(
                    "producers and consumers are {members} entries together; the most a manifest \
                     may set is {MAX_CHANNEL_MEMBERS} entries"
                ),
            ));
        }
        let range = |key: String, needle: &str, value: u64, min: u64, max: u64| {
            if value < min || value > max {
                Err(err(
                    key,
                    Some(needle),
                    format!("is {value}; it must be from {min} to {max}"),
                ))
            } else {
                Ok(())
            }
        };
        range(
            "strategy.maxChannelBytes".into(),
            "maxChannelBytes",
            s.max_channel_bytes,
            1024,
            MAX_CHANNEL_BYTES,
        )?;
        let mut ids = BTreeSet::new();
        for (i, c) in s.channels.iter().enumerate() {
            let key = format!("strategy.channels[{i}]");
            if !valid_id(&c.id) || !ids.insert(c.id.as_str()) {
                return Err(err(
                    format!("{key}.id"),
                    Some(&c.id),
                    format!(
                        "`{}` is not a usable id (letters, digits, `-` and `_`) or is declared twice",
                        c.id
                    ),
                ));
            }
            for (field, list) in [("producers", &c.producers), ("consumers", &c.consumers)] {
                if list.is_empty() {
                    return Err(err(
                        format!("{key}.{field}"),
                        Some(&c.id),
                        format!(
                            "list the subtasks that {}",
                            if field == "producers" {
                                "send"
                            } else {
                                "receive"
                            }
                        ),
                    ));
                }
                let mut uniq = BTreeSet::new();
                for q in list {
                    if self.subtask(q).is_none() {
                        return Err(err(
                            format!("{key}.{field}"),
                            Some(q),
                            format!("no subtask `{q}`"),
                        ));
                    }
                    if !uniq.insert(q) {
                        return Err(err(
                            format!("{key}.{field}"),
                            Some(q),
                            format!("`{q}` is listed twice"),
                        ));
                    }
                }
            }
            range(
                format!("{key}.maxMessageBytes"),
                &c.id,
                c.max_message_bytes,
                1,
                MAX_MESSAGE_BYTES,
            )?;
            range(format!("{key}.maxDepth"), &c.id, c.max_depth, 1, MAX_DEPTH)?;
            let kind = c.kind_or(s.communication_protocol);
            let queue_only = [
                ("ackTimeoutMs", c.ack_timeout_ms.is_some()),
                ("maxDeliveries", c.max_deliveries.is_some()),
            ];
            if kind != CommunicationProtocol::MessageQueue
                && let Some((field, _)) = queue_only.iter().find(|(_, set)| *set)
            {
                return Err(err(
                    format!("{key}.{field}"),
                    Some(&c.id),
                    format!(
                        "only a `message-queue` channel takes `{field}`; `{}` is `{}`",
                        c.id,
                        kind.as_str()
                    ),
                ));
            }
            if let Some(ms) = c.ack_timeout_ms {
                range(
                    format!("{key}.ackTimeoutMs"),
                    &c.id,
                    ms,
                    MIN_ACK_TIMEOUT_MS,
                    MAX_ACK_TIMEOUT_MS,
                )?;
            }
            if let Some(n) = c.max_deliveries {
                range(format!("{key}.maxDeliveries"), &c.id, n, 1, MAX_DELIVERIES)?;
            }
        }
        Ok(())
    }
}
