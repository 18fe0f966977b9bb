//! The model-call flags `run` and `run-agent` share, and the broker they build.

use crate::error::Error;
use crate::llm::{LlmBroker, LlmConfig, Mode, Recordings};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The environment variable naming the default `--llm-config` file.
pub const LLM_CONFIG_ENV: &str = "QI_HOST_LLM_CONFIG";

/// Model providers and record/replay.
#[derive(Debug, Clone, clap::Args)]
pub struct LlmArgs {
    /// The operator's model configuration: providers (kind, base URL, where the key is),
    /// aliases and prices, as TOML (see README, "Model calls"). Default: $QI_HOST_LLM_CONFIG.
    /// A manifest's [llm] section is added underneath (this file's names win).
    #[arg(long, value_name = "FILE")]
    pub llm_config: Option<PathBuf>,
    /// Answer every model call from the recordings in the data directory; nothing is sent and
    /// no key is read. A call with no recording fails (`unavailable`) naming the request.
    #[arg(long)]
    pub llm_replay: bool,
}

impl LlmArgs {
    /// The configuration file: `--llm-config`, else `$QI_HOST_LLM_CONFIG` (if set and not
    /// empty).
    pub fn config_file(&self) -> Option<PathBuf> {
        self.llm_config.clone().or_else(|| {
            std::env::var_os(LLM_CONFIG_ENV)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
    }

    /// The broker for these flags, `manifest`'s `[llm]` section and the data directory's
    /// `store` (recordings sealed under the master key of `key_file` / `$QI_HOST_MASTER_KEY`
    /// when there is one); `None` when no model is configured and nothing is replayed.
    pub fn broker(
        &self,
        manifest: Option<&LlmConfig>,
        store: Option<crate::store::Store>,
        key_file: Option<&Path>,
    ) -> Result<Option<Arc<LlmBroker>>, Error> {
        let mut config = manifest.cloned().unwrap_or_default();
        if let Some(file) = self.config_file() {
            config = config.merged(LlmConfig::load(&file)?);
        }
        if config.is_empty() && !self.llm_replay {
            return Ok(None);
        }
        let recordings = match store {
            Some(store) => {
                let master = crate::cli::state::master_key(key_file)?;
                Recordings::durable(store, master.as_ref())
            }
            None if self.llm_replay => {
                return Err(Error::field(
                    "--llm-replay",
                    "replays the recordings of a data directory; give --data-dir",
                ));
            }
            None => Recordings::in_memory(),
        };
        let mode = if self.llm_replay {
            Mode::Replay
        } else {
            Mode::Live
        };
        Ok(Some(Arc::new(LlmBroker::new(config, recordings, mode)?)))
    }
}
