//! Where the consumers' results go and how the tally reads them back: a shared context
//! document (`results`) or a results channel (`resultsChannel`).

use std::collections::BTreeMap;
use std::time::Duration;

use qi_guest_sdk::AgentError;
use qi_guest_sdk::channels;
use qi_guest_sdk::context::{self, ContextError, SyncStrategy};
use qi_guest_sdk::serde_json::{Map, Value, json};
use serde::{Deserialize, Serialize};

use crate::Job;

/// The context type of a results document.
const RESULTS_TYPE: &str = "results";
/// How long one wait for a result lasts; the tally waits again until the channel closes.
const WAIT: Duration = Duration::from_secs(1);

/// One handled job, as a consumer records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Done {
    /// The job's number.
    pub n: u32,
    /// What the consumer computed: `n * n`.
    pub square: u64,
    /// The consumer's subtask id.
    pub by: String,
    /// The delivery count of the message it came in.
    pub delivery: u32,
}

impl Done {
    /// The result of handling `job`, delivered for the `delivery`-th time, by subtask `by`.
    pub fn of(job: Job, by: &str, delivery: u32) -> Done {
        Done {
            n: job.n,
            square: u64::from(job.n) * u64::from(job.n),
            by: by.to_owned(),
            delivery,
        }
    }

    fn entry(self) -> (u32, Entry) {
        let entry = Entry {
            square: self.square,
            by: self.by,
            delivery: self.delivery,
        };
        (self.n, entry)
    }
}

/// A result as the document keeps it, under `/done/<n>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// `n * n`.
    pub square: u64,
    /// The consumer's subtask id.
    pub by: String,
    /// The delivery count of the message it came in.
    pub delivery: u32,
}

/// The results document: `{"done": {"<n>": {"square", "by", "delivery"}}}`. Other fields are
/// kept as they are.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct ResultsDoc {
    #[serde(default)]
    done: BTreeMap<u32, Entry>,
    #[serde(flatten)]
    other: Map<String, Value>,
}

/// Where results go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Results {
    /// The context document with this id.
    Context(String),
    /// The channel with this id.
    Channel(String),
}

impl Results {
    /// The destination the inputs `results` and `resultsChannel` name: exactly one of them.
    ///
    /// # Errors
    ///
    /// [`AgentError::InvalidInput`] when neither or both are given, or the one given is empty.
    pub fn from_inputs(
        results: Option<String>,
        results_channel: Option<String>,
    ) -> Result<Results, AgentError> {
        let results = match (results, results_channel) {
            (Some(context), None) => Results::Context(context),
            (None, Some(channel)) => Results::Channel(channel),
            _ => {
                return Err(AgentError::InvalidInput(
                    "name where the results are: either `results` (a context id) or \
                     `resultsChannel` (a channel id)"
                        .into(),
                ));
            }
        };
        match &results {
            Results::Context(id) | Results::Channel(id) if id.is_empty() => Err(
                AgentError::InvalidInput("the results' context or channel id is empty".into()),
            ),
            _ => Ok(results),
        }
    }

    /// Records one result: sets `/done/<n>` of the document (creating it when missing), or
    /// sends it on the channel.
    ///
    /// # Errors
    ///
    /// [`AgentError::Failed`] carrying the context or channel error.
    pub fn record(&self, done: &Done) -> Result<(), AgentError> {
        match self {
            Results::Channel(channel) => {
                channels::send_json(channel, done)?;
                Ok(())
            }
            Results::Context(id) => {
                let (n, entry) = done.clone().entry();
                let set = |doc: &mut ResultsDoc| {
                    doc.done.insert(n, entry.clone());
                };
                match context::update(id, set) {
                    Err(ContextError::NotFound(_)) => {
                        let mut doc = ResultsDoc::default();
                        doc.done.insert(n, entry.clone());
                        match context::create(Some(id), RESULTS_TYPE, &doc, SyncStrategy::Strong) {
                            // Another consumer created it in between: write into theirs.
                            Err(ContextError::Refused(_)) => context::update(id, set).map(drop),
                            created => created.map(drop),
                        }
                    }
                    updated => updated.map(drop),
                }
                .map_err(AgentError::from)
            }
        }
    }

    /// Every result recorded: the document's `done` (none when there is no document yet), or
    /// every result on the channel until it is closed, each acked when `ack`.
    ///
    /// # Errors
    ///
    /// [`AgentError::Failed`] carrying the context or channel error (a document or result of
    /// another shape included).
    pub fn read(&self, ack: bool) -> Result<Tally, AgentError> {
        let mut tally = Tally::default();
        match self {
            Results::Context(id) => match context::get::<ResultsDoc>(id) {
                Ok(document) => tally.done = document.doc.done,
                Err(ContextError::NotFound(_)) => {}
                Err(error) => return Err(error.into()),
            },
            Results::Channel(channel) => {
                for message in channels::messages(channel, WAIT) {
                    let message = message?;
                    tally.add(message.json()?);
                    if ack {
                        message.ack()?;
                    }
                }
            }
        }
        Ok(tally)
    }
}

/// The results as the tally sees them: one entry per job number.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    done: BTreeMap<u32, Entry>,
}

impl Tally {
    /// Adds a result; a later one for the same job replaces the earlier.
    pub fn add(&mut self, done: Done) {
        let (n, entry) = done.entry();
        self.done.insert(n, entry);
    }

    /// `{"processed": <distinct jobs>, "missing": [jobs in 0..expect without a result],
    /// "redelivered": <jobs whose result came from a delivery over 1>}`.
    pub fn summary(&self, expect: u32) -> Value {
        let missing: Vec<u32> = (0..expect).filter(|n| !self.done.contains_key(n)).collect();
        let redelivered = self.done.values().filter(|e| e.delivery > 1).count();
        json!({
            "processed": self.done.len(),
            "missing": missing,
            "redelivered": redelivered,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qi_guest_sdk::serde_json;

    #[test]
    fn a_result_is_the_square_and_who_made_it() {
        let done = Done::of(Job { n: 70_000 }, "consume-a", 2);
        assert_eq!(done.square, 4_900_000_000);
        assert_eq!(
            serde_json::to_value(&done).unwrap(),
            json!({"n": 70_000, "square": 4_900_000_000_u64, "by": "consume-a", "delivery": 2})
        );
    }

    #[test]
    fn the_document_keeps_results_by_number_and_other_fields() {
        let text = r#"{"done": {"10": {"square": 100, "by": "b", "delivery": 1},
                                "2": {"square": 4, "by": "a", "delivery": 2}},
                       "note": "kept"}"#;
        let doc: ResultsDoc = serde_json::from_str(text).unwrap();
        assert_eq!(doc.done.keys().copied().collect::<Vec<_>>(), [2, 10]);
        assert_eq!(doc.done[&2].by, "a");
        let back = serde_json::to_value(&doc).unwrap();
        assert_eq!(back["note"], "kept");
        assert_eq!(back["done"]["10"]["square"], 100);

        let empty: ResultsDoc = serde_json::from_str("{}").unwrap();
        assert!(empty.done.is_empty());
        assert!(serde_json::from_str::<ResultsDoc>(r#"{"done": {"x": {}}}"#).is_err());
        assert!(serde_json::from_str::<ResultsDoc>(r#"{"done": []}"#).is_err());
    }

    #[test]
    fn the_tally_counts_each_job_once_and_the_last_result_wins() {
        let mut tally = Tally::default();
        tally.add(Done::of(Job { n: 0 }, "consume-a", 1));
        tally.add(Done::of(Job { n: 1 }, "consume-a", 1));
        tally.add(Done::of(Job { n: 3 }, "consume-b", 2));
        // Job 1 again: handled a second time after its first consumer crashed unacked.
        tally.add(Done::of(Job { n: 1 }, "consume-b", 2));
        assert_eq!(
            tally.summary(5),
            json!({"processed": 3, "missing": [2, 4], "redelivered": 2})
        );
        assert_eq!(
            Tally::default().summary(2),
            json!({"processed": 0, "missing": [0, 1], "redelivered": 0})
        );
        // Results beyond `expect` still count as processed, never as missing.
        assert_eq!(tally.summary(1)["missing"], json!([]));
        assert_eq!(tally.summary(1)["processed"], 3);
    }

    #[test]
    fn exactly_one_destination_is_named() {
        assert_eq!(
            Results::from_inputs(Some("results/r".into()), None).unwrap(),
            Results::Context("results/r".into())
        );
        assert_eq!(
            Results::from_inputs(None, Some("results".into())).unwrap(),
            Results::Channel("results".into())
        );
        for (context, channel) in [
            (None, None),
            (Some("a".to_string()), Some("b".to_string())),
            (Some(String::new()), None),
            (None, Some(String::new())),
        ] {
            let error = Results::from_inputs(context, channel).unwrap_err();
            assert_eq!(error.kind(), "invalid-input", "{error}");
        }
    }
}
