//! The environment's part in configuration: `${VAR}` expansion inside string values and the
//! `FQ_*` overrides. Variables are read only through the lookup it is handed, never directly, so
//! tests never touch the process environment.

use std::path::PathBuf;

use super::{Config, ConfigError, check_amqp_url};

/// How configuration reads environment variables: `Some(value)` when set.
pub(super) type Lookup<'a> = dyn Fn(&str) -> Option<String> + 'a;

/// The process environment as a [`Lookup`]. A variable that is not valid Unicode counts as unset.
pub(super) fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Overrides `broker`.
pub(super) const FQ_BROKER: &str = "FQ_BROKER";
/// Overrides `database`.
pub(super) const FQ_DATABASE: &str = "FQ_DATABASE";
/// Overrides `rabbitmq.url`.
pub(super) const FQ_RABBITMQ_URL: &str = "FQ_RABBITMQ_URL";

/// Why a string value could not be expanded.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(super) enum ExpandError {
    /// `${NAME}` where NAME is not set.
    #[error("environment variable {0} is not set")]
    Unset(String),
    /// A reference that is not `${NAME}` (unterminated, empty or bad name).
    #[error("{0}")]
    Malformed(String),
}

/// Replaces each `${NAME}` in `text` with the variable's value; `$${` stands for a literal `${`.
///
/// NAME is `[A-Za-z_][A-Za-z0-9_]*`. Values are inserted as they are, never expanded again.
/// Returns the new text and whether it used any variable (a number written as `"${PORT}"` may
/// then be read as a number).
pub(super) fn expand(text: &str, env: &Lookup<'_>) -> Result<(String, bool), ExpandError> {
    if !text.contains('$') {
        return Ok((text.to_owned(), false));
    }
    let mut out = String::with_capacity(text.len());
    let mut used_env = false;
    let mut rest = text;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        rest = &rest[dollar..];
        if let Some(after) = rest.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if let Some(after) = rest.strip_prefix("${") {
            let Some(close) = after.find('}') else {
                return Err(ExpandError::Malformed(format!(
                    "unterminated ${{ in {text:?}: expected ${{NAME}} (write $${{ for a literal ${{)"
                )));
            };
            let name = &after[..close];
            if !is_variable_name(name) {
                return Err(ExpandError::Malformed(format!(
                    "invalid variable reference ${{{name}}} in {text:?}: a name is letters, digits \
                     and _, not starting with a digit"
                )));
            }
            let value = env(name).ok_or_else(|| ExpandError::Unset(name.to_owned()))?;
            out.push_str(&value);
            used_env = true;
            rest = &after[close + 1..];
        } else {
            out.push('$');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    Ok((out, used_env))
}

fn is_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Applies `FQ_BROKER`, `FQ_DATABASE` and `FQ_RABBITMQ_URL`, which win over the file.
///
/// A set but empty variable is an error rather than "unset": an empty override is far more often
/// a deployment mistake than a wish for the file's value.
///
/// # Errors
///
/// `BadOverride` naming the variable when its value is empty or unusable.
pub(super) fn apply_overrides(config: &mut Config, env: &Lookup<'_>) -> Result<(), ConfigError> {
    let bad = |variable: &str, message: String| ConfigError::BadOverride {
        variable: variable.to_owned(),
        message,
    };
    if let Some(value) = env(FQ_BROKER) {
        config.broker = value.parse().map_err(|message| bad(FQ_BROKER, message))?;
    }
    if let Some(value) = env(FQ_DATABASE) {
        if value.is_empty() {
            return Err(bad(FQ_DATABASE, "must not be empty".to_owned()));
        }
        config.database = PathBuf::from(value);
    }
    if let Some(value) = env(FQ_RABBITMQ_URL) {
        check_amqp_url(&value).map_err(|message| bad(FQ_RABBITMQ_URL, message))?;
        config.rabbitmq.url = Some(value);
    }
    Ok(())
}
