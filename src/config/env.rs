//! The environment's part in configuration: `${VAR}` expansion inside string values and the
//! `FQ_*` overrides. Variables are read only through the lookup it is handed, never directly, so
//! tests never touch the process environment.

use std::path::PathBuf;

use super::{BrokerKind, Config, ConfigError, check_amqp_url};

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
        config.broker = value
            .parse::<BrokerKind>()
            .map_err(|message| bad(FQ_BROKER, message))?;
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

/// A fake environment holding exactly `pairs`, for tests across the config module.
#[cfg(test)]
pub(super) fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let map: std::collections::HashMap<String, String> = pairs
        .iter()
        .map(|&(name, value)| (name.to_owned(), value.to_owned()))
        .collect();
    move |name| map.get(name).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    #[test]
    fn text_without_references_is_unchanged() -> TestResult {
        let env = env_of(&[]);
        assert_eq!(expand("guest", &env)?, ("guest".to_owned(), false));
        assert_eq!(expand("", &env)?, (String::new(), false));
        assert_eq!(
            expand("pa$$word $5 $X", &env)?,
            ("pa$$word $5 $X".to_owned(), false)
        );
        assert_eq!(
            expand("trailing $", &env)?,
            ("trailing $".to_owned(), false)
        );
        Ok(())
    }

    #[test]
    fn references_expand_in_place() -> TestResult {
        let env = env_of(&[("USER", "fq"), ("HOST", "rabbit.local"), ("EMPTY", "")]);
        assert_eq!(expand("${USER}", &env)?, ("fq".to_owned(), true));
        assert_eq!(
            expand("amqp://${USER}@${HOST}:5672/", &env)?,
            ("amqp://fq@rabbit.local:5672/".to_owned(), true)
        );
        assert_eq!(expand("a${EMPTY}b", &env)?, ("ab".to_owned(), true));
        assert_eq!(expand("é${USER}é", &env)?, ("éfqé".to_owned(), true));
        Ok(())
    }

    #[test]
    fn values_are_not_expanded_twice() -> TestResult {
        let env = env_of(&[("A", "${B}"), ("B", "no")]);
        assert_eq!(expand("${A}", &env)?, ("${B}".to_owned(), true));
        Ok(())
    }

    #[test]
    fn double_dollar_escapes_a_reference() -> TestResult {
        let env = env_of(&[("X", "x")]);
        assert_eq!(expand("$${X}", &env)?, ("${X}".to_owned(), false));
        assert_eq!(expand("$${X}-${X}", &env)?, ("${X}-x".to_owned(), true));
        Ok(())
    }

    #[test]
    fn unset_variable_is_named() {
        let env = env_of(&[]);
        assert_eq!(
            expand("pre-${RABBIT_PASSWORD}", &env),
            Err(ExpandError::Unset("RABBIT_PASSWORD".to_owned()))
        );
    }

    #[test]
    fn malformed_references_are_errors() {
        let env = env_of(&[("X", "x")]);
        for text in ["${X", "${}", "${1X}", "${A-B}", "${ X }", "${X}${"] {
            assert!(
                matches!(expand(text, &env), Err(ExpandError::Malformed(_))),
                "{text:?}"
            );
        }
    }

    #[test]
    fn no_overrides_leave_the_config_alone() -> TestResult {
        let mut config = Config::default();
        apply_overrides(&mut config, &env_of(&[]))?;
        assert_eq!(config, Config::default());
        Ok(())
    }

    #[test]
    fn overrides_win() -> TestResult {
        let mut config = Config::default();
        let env = env_of(&[
            ("FQ_BROKER", "rabbitmq"),
            ("FQ_DATABASE", "/data/q.redb"),
            ("FQ_RABBITMQ_URL", "amqps://u:p@mq.example:5671/prod"),
        ]);
        apply_overrides(&mut config, &env)?;
        assert_eq!(config.broker, BrokerKind::Rabbitmq);
        assert_eq!(config.database, PathBuf::from("/data/q.redb"));
        assert_eq!(
            config.rabbitmq.url.as_deref(),
            Some("amqps://u:p@mq.example:5671/prod")
        );
        Ok(())
    }

    #[test]
    fn bad_overrides_name_the_variable() {
        let cases = [
            ("FQ_BROKER", "redis"),
            ("FQ_BROKER", "Database"),
            ("FQ_BROKER", ""),
            ("FQ_DATABASE", ""),
            ("FQ_RABBITMQ_URL", "http://u:secret@host/"),
            ("FQ_RABBITMQ_URL", ""),
        ];
        for (variable, value) in cases {
            let mut config = Config::default();
            let err = apply_overrides(&mut config, &env_of(&[(variable, value)]))
                .expect_err("bad override");
            assert!(
                matches!(&err, ConfigError::BadOverride { variable: v, .. } if v == variable),
                "{variable}={value:?}: {err:?}"
            );
            assert!(
                err.to_string()
                    .starts_with(&format!("environment variable {variable}: ")),
                "{err}"
            );
            assert!(!err.to_string().contains("secret"), "{err}");
        }
    }
}
