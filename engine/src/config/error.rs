//! [`ConfigError`]: what is wrong with an `extra_config`, and what to write instead.

/// A rejected `extra_config`.
///
/// Every message names the key, shows the value that was given and says what
/// to write instead, e.g.
/// `extra_config key "protocol": got "rdmaa"; expected "rdma" or "tcp" (did you mean "rdma"?)`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The text handed to [`Config::from_json`](super::Config::from_json) is not JSON.
    #[error(
        "extra_config is not valid JSON ({reason}); pass a JSON object such as \
         {{\"discovery_addr\": \"10.0.0.1:31998\"}}"
    )]
    Json {
        /// The JSON parser's description of the problem.
        reason: String,
    },
    /// The top-level value is not a JSON object.
    #[error(
        "extra_config must be a JSON object, got {got}; pass an object such as \
         {{\"discovery_addr\": \"10.0.0.1:31998\"}}"
    )]
    NotAnObject {
        /// The value that was given, shortened.
        got: String,
    },
    /// A required key is absent (or `null`).
    #[error("extra_config key \"{key}\" is required: {hint}")]
    Missing {
        /// The missing key.
        key: String,
        /// What to set it to.
        hint: String,
    },
    /// A key has a value of the wrong type or outside its accepted range.
    #[error("extra_config key \"{key}\": got {got}; expected {expected}")]
    Invalid {
        /// The offending key.
        key: String,
        /// The value that was given, as JSON, shortened.
        got: String,
        /// What is accepted, with a suggestion when one is close.
        expected: String,
    },
    /// Two keys that are fine alone contradict each other.
    #[error("extra_config keys \"{key}\" and \"{other}\": {problem}")]
    Conflict {
        /// The key to change first.
        key: String,
        /// The key it conflicts with.
        other: String,
        /// Both values and how to resolve the conflict.
        problem: String,
    },
}

impl ConfigError {
    /// The key this error is about, when there is one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Json { .. } | ConfigError::NotAnObject { .. } => None,
            ConfigError::Missing { key, .. }
            | ConfigError::Invalid { key, .. }
            | ConfigError::Conflict { key, .. } => Some(key),
        }
    }
}
