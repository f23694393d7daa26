//! The CLI's error: a usage error (exit code 2) or a runtime failure (exit code 1), carrying the
//! underlying error with its chain of causes, printed once as `fq: error: cause: ...`.

use std::error::Error as StdError;
use std::fmt;
use std::process::ExitCode;

/// Exit code of a runtime failure: a store error, an unknown task, a task in the wrong state.
pub(crate) const EXIT_FAILURE: u8 = 1;
/// Exit code of a usage error: bad flags or flag values, a bad configuration, a missing
/// confirmation. clap uses the same code for the errors it finds.
pub(crate) const EXIT_USAGE: u8 = 2;
/// Exit code of `fq wait` when its timeout passed before the task's outcome.
pub(crate) const EXIT_TIMEOUT: u8 = 3;

type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// Which kind of failure, and so which exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// The command was called wrong; nothing was changed.
    Usage,
    /// The command was right but could not be carried out.
    Runtime,
    /// A wait ran out of time (`fq wait --timeout`); the task was left alone.
    TimedOut,
}

/// An error as the CLI reports it.
#[derive(Debug)]
pub(crate) struct CliError {
    kind: Kind,
    error: BoxError,
}

/// A message in front of an underlying error (`cannot connect to ADDR: <error>`).
#[derive(Debug)]
struct Context {
    message: String,
    source: BoxError,
}

impl fmt::Display for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl StdError for Context {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(self.source.as_ref())
    }
}

impl CliError {
    /// A usage error with this message.
    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Self {
            kind: Kind::Usage,
            error: message.into().into(),
        }
    }

    /// A runtime failure with this message.
    pub(crate) fn runtime(message: impl Into<String>) -> Self {
        Self {
            kind: Kind::Runtime,
            error: message.into().into(),
        }
    }

    /// A runtime failure caused by `error`.
    pub(crate) fn from_error(error: impl Into<BoxError>) -> Self {
        Self {
            kind: Kind::Runtime,
            error: error.into(),
        }
    }

    /// The same failure, explained by `message` first.
    pub(crate) fn context(self, message: impl Into<String>) -> Self {
        Self {
            kind: self.kind,
            error: Box::new(Context {
                message: message.into(),
                source: self.error,
            }),
        }
    }

    /// Which kind of failure this is.
    #[cfg(test)]
    pub(crate) fn kind(&self) -> Kind {
        self.kind
    }

    /// The process exit code for this failure.
    pub(crate) fn exit_code(&self) -> ExitCode {
        ExitCode::from(match self.kind {
            Kind::Usage => EXIT_USAGE,
            Kind::Runtime => EXIT_FAILURE,
            Kind::TimedOut => EXIT_TIMEOUT,
        })
    }

    /// True when the store is held by another process (and so may be free a moment later).
    pub(crate) fn is_locked(&self) -> bool {
        let mut cause: Option<&(dyn StdError + 'static)> = Some(self.error.as_ref());
        while let Some(error) = cause {
            let store = error.downcast_ref::<crate::StoreError>().or_else(|| {
                match error.downcast_ref::<crate::Error>() {
                    Some(crate::Error::Store(store)) => Some(store),
                    _ => None,
                }
            });
            if matches!(store, Some(crate::StoreError::Locked { .. })) {
                return true;
            }
            cause = error.source();
        }
        false
    }

    /// True when stdout was closed under us (`fq list | head`): not worth a message.
    pub(crate) fn is_broken_pipe(&self) -> bool {
        let mut cause: Option<&(dyn StdError + 'static)> = Some(self.error.as_ref());
        while let Some(error) = cause {
            if let Some(io) = error.downcast_ref::<std::io::Error>()
                && io.kind() == std::io::ErrorKind::BrokenPipe
            {
                return true;
            }
            cause = error.source();
        }
        false
    }

    /// The error and its causes on one line, `error: cause: cause`. A cause whose text the
    /// line already holds (errors that print their source themselves) is left out.
    pub(crate) fn render(&self) -> String {
        let mut line = self.error.to_string();
        let mut cause = self.error.source();
        while let Some(error) = cause {
            let text = error.to_string();
            if !text.is_empty() && !line.contains(&text) {
                line.push_str(": ");
                line.push_str(&text);
            }
            cause = error.source();
        }
        line
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render())
    }
}

/// An engine error is a runtime failure, except a bad configuration, which is the caller's to
/// fix (a usage error). Where a command passes flag values to the engine, it uses
/// [`usage_if_invalid`] instead, so that the engine's own checks count as usage errors too.
impl From<crate::Error> for CliError {
    fn from(error: crate::Error) -> Self {
        let kind = match error {
            crate::Error::Config(_) => Kind::Usage,
            crate::Error::WaitTimeout { .. } => Kind::TimedOut,
            _ => Kind::Runtime,
        };
        Self {
            kind,
            error: Box::new(error),
        }
    }
}

impl From<crate::ConfigError> for CliError {
    fn from(error: crate::ConfigError) -> Self {
        Self {
            kind: Kind::Usage,
            error: Box::new(error),
        }
    }
}

impl From<std::io::Error> for CliError {
    fn from(error: std::io::Error) -> Self {
        Self::from_error(error)
    }
}

impl From<crate::SignalError> for CliError {
    fn from(error: crate::SignalError) -> Self {
        let context = error.to_string();
        Self::from(error.source).context(context)
    }
}

impl From<serde_json::Error> for CliError {
    fn from(error: serde_json::Error) -> Self {
        Self::from_error(error)
    }
}

/// For engine calls that carry flag values: the engine refusing an argument
/// ([`crate::Error::InvalidInput`]) is a usage error; anything else as [`From`].
pub(crate) fn usage_if_invalid(error: crate::Error) -> CliError {
    if matches!(error, crate::Error::InvalidInput { .. }) {
        CliError {
            kind: Kind::Usage,
            error: Box::new(error),
        }
    } else {
        CliError::from(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chain_prints_once_with_its_exit_code() {
        let io = std::io::Error::other("disk on fire");
        let error = CliError::from_error(io)
            .context("cannot write the store")
            .context("enqueue failed");
        assert_eq!(
            error.render(),
            "enqueue failed: cannot write the store: disk on fire"
        );
        assert_eq!(error.kind(), Kind::Runtime);
        let usage = CliError::usage("add --yes");
        assert_eq!(usage.kind(), Kind::Usage);
        assert_eq!(usage.render(), "add --yes");
        let invalid = usage_if_invalid(crate::Error::InvalidInput {
            field: "queue",
            message: "is empty".into(),
        });
        assert_eq!(invalid.kind(), Kind::Usage);
        assert_eq!(invalid.render(), "invalid queue: is empty");
    }

    #[test]
    fn a_broken_pipe_is_recognised_through_context() {
        let error = CliError::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
            .context("writing the table");
        assert!(error.is_broken_pipe());
        assert!(!CliError::runtime("x").is_broken_pipe());
    }
}
