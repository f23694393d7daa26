//! The `[[schedules]]` entries of a config file (`schedules:` under `task:` in Framefox's
//! `config/services.yaml`): their shape only. What a spec or zone means is checked when an
//! engine opens and declares them (`crate::schedule`), and a refusal then names the entry's key
//! and the file, as a bad value here would.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;

/// JSON arguments from a config file (`args = [...]`, `kwargs = {...}`).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(transparent)]
pub struct JsonArguments(pub serde_json::Value);

// Config values come from TOML or YAML, which have no NaN: equality is total here.
impl Eq for JsonArguments {}

section! {
    /// One recurring schedule declared in the configuration (`[[schedules]]`). An engine that
    /// owns the store declares each at open, as [`crate::Engine::schedule`] would; a schedule
    /// that came from the configuration and is no longer in it is disabled and shown as
    /// orphaned (`fq schedules`), not deleted: `fq schedules remove NAME` deletes it.
    pub struct ScheduleConfig {
        /// The schedule's name (required).
        pub name: String = String::new(),
        /// A cron expression: 5 fields, or 6 with seconds first, or `@daily`-style nicknames.
        pub cron: Option<String> = None,
        /// A fixed interval instead of `cron` (`"30s"`).
        pub every: Option<Duration> = None,
        /// The IANA time zone `cron` is read in; default `UTC`.
        pub zone: Option<String> = None,
        /// The task to queue (required).
        pub task: String = String::new(),
        /// Its positional arguments.
        pub args: Option<JsonArguments> = None,
        /// Its keyword arguments.
        pub kwargs: Option<JsonArguments> = None,
        /// Its queue; default `defaults.queue`.
        pub queue: Option<String> = None,
        /// Its priority; default `defaults.priority`.
        pub priority: Option<i32> = None,
        /// Its retries; default `defaults.max_retries`.
        pub max_retries: Option<u32> = None,
        /// Its time limit; default `defaults.timeout`.
        pub timeout: Option<Duration> = None,
        /// `latest` (default), `all` or `skip`.
        pub catch_up: Option<String> = None,
        /// Declared paused.
        pub paused: bool = false,
    }
}

impl ScheduleConfig {
    /// The `{"args", "kwargs"}` payload of the task.
    pub fn payload(&self) -> serde_json::Value {
        let mut payload = serde_json::Map::new();
        if let Some(args) = &self.args {
            payload.insert("args".into(), args.0.clone());
        }
        if let Some(kwargs) = &self.kwargs {
            payload.insert("kwargs".into(), kwargs.0.clone());
        }
        serde_json::Value::Object(payload)
    }

    /// The refusal of entry `index` of `source`'s `schedules` for `field`.
    pub(crate) fn refusal(
        source: Option<&Path>,
        index: usize,
        field: &str,
        message: impl fmt::Display,
    ) -> ConfigError {
        ConfigError::invalid(
            source,
            format!("schedules[{index}].{field}"),
            message.to_string(),
        )
    }
}
