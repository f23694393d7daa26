//! `ConfigError`: every way loading or validating the configuration can fail, each naming the
//! file and key involved. It owns no parsing; parser errors arrive here already turned into text.

use std::path::{Path, PathBuf};

/// Why a configuration could not be loaded, or why a loaded one is not valid.
///
/// Key paths (`worker.concurrency`, `worker.queues[1]`) are relative to fq's own section: the top
/// level of `fq.toml`, or the `task:` mapping of `config/services.yaml`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The config file could not be read (missing, a directory, unreadable, too large).
    ///
    /// The operating system's reason is the error's `source()`.
    #[error("{}: cannot read the config file", path.display())]
    Io {
        /// The file fq tried to read.
        path: PathBuf,
        /// What the operating system (or the size check) said.
        source: std::io::Error,
    },
    /// The file name does not end in `.toml`, `.yaml` or `.yml`, so fq cannot tell its format.
    #[error("{}: unknown config format: expected a .toml, .yaml or .yml file", path.display())]
    UnknownFormat {
        /// The file fq was asked to load.
        path: PathBuf,
    },
    /// The file is not valid TOML or YAML (or not valid UTF-8).
    #[error(
        "{}{}{}: syntax error: {message}",
        path.display(), shown(*line, ":", ""), shown(line.and(*column), ":", "")
    )]
    Syntax {
        /// The file that failed to parse.
        path: PathBuf,
        /// 1-based line of the error, when the parser reports one.
        line: Option<usize>,
        /// 1-based column (in characters) of the error, when the parser reports one.
        column: Option<usize>,
        /// The parser's description of the problem.
        message: String,
    },
    /// fq's section has a key fq does not know, usually a typo.
    #[error(
        "{}: unknown key {key}{}",
        path.display(), shown(suggestion.as_deref(), " (did you mean ", "?)")
    )]
    UnknownKey {
        /// The file that holds the key.
        path: PathBuf,
        /// Full key path, e.g. `worker.concurency`.
        key: String,
        /// A known key with a similar spelling, e.g. `worker.concurrency`.
        suggestion: Option<String>,
    },
    /// A value has the wrong type or is out of range.
    #[error("{}{key}: {message}", shown(path.as_ref().map(|path| path.display()), "", ": "))]
    InvalidValue {
        /// The file the value came from; `None` for a `Config` built in code.
        path: Option<PathBuf>,
        /// Full key path, e.g. `worker.concurrency`.
        key: String,
        /// What is wrong, e.g. `must be at least 1, got 0`.
        message: String,
    },
    /// A YAML file has no `task:` section, where fq's settings live.
    #[error(
        "{}: no `{section}:` section: fq reads its settings from the top-level `{section}:` key",
        path.display()
    )]
    MissingSection {
        /// The YAML file.
        path: PathBuf,
        /// The missing top-level key (`task`).
        section: String,
    },
    /// A `${VAR}` reference names a variable that is not set (or is not valid Unicode).
    #[error("{}: {key}: environment variable {variable} is not set", path.display())]
    UnsetVariable {
        /// The file that holds the reference.
        path: PathBuf,
        /// Full key path of the value that holds the reference.
        key: String,
        /// The variable's name, without `${` and `}`.
        variable: String,
    },
    /// An `FQ_*` override variable holds a value fq cannot use.
    #[error("environment variable {variable}: {message}")]
    BadOverride {
        /// The variable, e.g. `FQ_BROKER`.
        variable: String,
        /// What is wrong with its value.
        message: String,
    },
}

impl ConfigError {
    /// An `InvalidValue` error.
    pub(super) fn invalid(
        path: Option<&Path>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self::InvalidValue {
            path: path.map(Path::to_path_buf),
            key: key.into(),
            message: message.into(),
        }
    }
}

/// `value` between `before` and `after`, or nothing when there is no value: the optional parts
/// of a message (`:line`, ` (did you mean X?)`, `file: `).
fn shown(value: Option<impl std::fmt::Display>, before: &str, after: &str) -> String {
    value.map_or_else(String::new, |value| format!("{before}{value}{after}"))
}
