//! Trust levels: how far the host trusts an agent. Policies see a level as a number
//! (`principal.trust`, 0 = `none` … 4 = `full`), see [`TrustLevel::rank`].

use serde::{Deserialize, Serialize};

/// How far the host trusts an agent.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "kebab-case")]
pub enum TrustLevel {
    /// Not at all.
    None,
    /// The default for a spawned agent.
    #[default]
    Low,
    /// Medium.
    Medium,
    /// High.
    High,
    /// Full.
    Full,
}

impl TrustLevel {
    /// Every level, lowest first.
    pub const ALL: [TrustLevel; 5] = [
        TrustLevel::None,
        TrustLevel::Low,
        TrustLevel::Medium,
        TrustLevel::High,
        TrustLevel::Full,
    ];

    /// Name as written.
    pub fn as_str(self) -> &'static str {
        match self {
            TrustLevel::None => "none",
            TrustLevel::Low => "low",
            TrustLevel::Medium => "medium",
            TrustLevel::High => "high",
            TrustLevel::Full => "full",
        }
    }

    /// The number policies compare (`principal.trust`): `none` 0, `low` 1, `medium` 2,
    /// `high` 3, `full` 4; also the `u8` form kept in atomics.
    pub fn rank(self) -> u8 {
        self as u8
    }

    /// From its `u8` form (for atomics).
    pub fn from_u8(v: u8) -> TrustLevel {
        Self::ALL[usize::from(v).min(4)]
    }
}

impl std::str::FromStr for TrustLevel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| {
                format!("`{s}` is not a trust level; use none, low, medium, high or full")
            })
    }
}
