//! Turns fq's section of a parsed file (a format-neutral [`Node`] tree) into a [`Config`]:
//! `${VAR}` expansion over the tree, then serde with fq's own deserializer so every message reads
//! the same for TOML and YAML and names its key path. Range checks are `Config::validate`'s job;
//! reading and parsing files is `file`'s.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::de::value::{MapDeserializer, SeqDeserializer};
use serde::de::{self, Deserialize, Deserializer, Expected, IntoDeserializer, Unexpected, Visitor};

use super::duration::parse_duration;
use super::env::{ExpandError, Lookup, expand};
use super::{BrokerKind, Config, ConfigError, parse_listen};

/// A parsed value, whichever format it came from. Tables keep the parser's key order (file order
/// for YAML, sorted for TOML), which decides which of several problems is reported first.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Node {
    /// YAML `~`, `null` or an empty value; TOML has none.
    Null,
    Bool(bool),
    /// Wide enough for every TOML (`i64`) and YAML (`i64` or `u64`) integer.
    Int(i128),
    Float(f64),
    Str(String),
    /// A string that took at least one `${VAR}`: only such a string may stand for a number
    /// (`port = "${RABBIT_PORT}"`), since variables are always text.
    Env(String),
    List(Vec<Node>),
    Table(Vec<(String, Node)>),
    /// A value fq never accepts (a TOML datetime, a YAML tagged value), by its description.
    Other(&'static str),
}

impl Node {
    /// The value's kind with an article, for "expected X, got Y" messages.
    pub(super) fn kind(&self) -> &'static str {
        match self {
            Node::Null => "nothing (null)",
            Node::Bool(_) => "a boolean",
            Node::Int(_) => "an integer",
            Node::Float(_) => "a float",
            Node::Str(_) | Node::Env(_) => "a string",
            Node::List(_) => "a list",
            Node::Table(_) => "a table",
            Node::Other(kind) => kind,
        }
    }

    /// The integer a key of an integer type holds; a string counts only when it took a `${VAR}`.
    fn integer(self) -> Result<i128, DeError> {
        let message = match self {
            Node::Int(number) => return Ok(number),
            Node::Env(text) => match text.trim().parse() {
                Ok(number) => return Ok(number),
                Err(_) => format!(
                    "expected an integer, got {text:?} (after expanding environment variables)"
                ),
            },
            Node::Str(text) if text.trim().parse::<i128>().is_ok() => {
                format!("expected an integer, got the string {text:?}: remove the quotes")
            }
            other => format!("expected an integer, got {}", other.kind()),
        };
        Err(DeError::Message(message))
    }

    /// A duration: a string for [`parse_duration`] (`"5s"`, `"1h30m"`) or whole seconds.
    fn duration(self) -> Result<Duration, DeError> {
        let expected = "a duration such as \"5s\" or \"1h30m\", or a whole number of seconds";
        match self {
            Node::Str(text) | Node::Env(text) => parse_duration(&text).map_err(de::Error::custom),
            Node::Int(secs) => u64::try_from(secs)
                .map(Duration::from_secs)
                .map_err(|_| DeError::Message(format!("must not be negative, got {secs}"))),
            other => Err(de::Error::invalid_type(
                Unexpected::Other(other.kind()),
                &expected,
            )),
        }
    }
}

/// Builds a `Config` from the entries of fq's section, starting from the defaults.
///
/// The result has `source` set to `origin` and is not yet validated.
///
/// # Errors
///
/// `UnsetVariable` or a malformed `${...}` first, then `UnknownKey` or `InvalidValue` (wrong
/// type, out of the type's range, bad duration), each naming the key path and `origin`.
pub(super) fn decode(
    entries: Vec<(String, Node)>,
    origin: &Path,
    env: &Lookup<'_>,
) -> Result<Config, ConfigError> {
    let mut tree = Node::Table(entries);
    expand_tree(&mut tree, "", origin, env)?;
    let mut config: Config = serde_path_to_error::deserialize(tree).map_err(|err| {
        let key = err.path().to_string();
        match err.into_inner() {
            DeError::Message(message) => ConfigError::invalid(Some(origin), key, message),
            DeError::UnknownKey { field, suggestion } => {
                let section = key.strip_suffix(field.as_str()).unwrap_or_default();
                ConfigError::UnknownKey {
                    path: origin.to_path_buf(),
                    suggestion: suggestion.map(|known| format!("{section}{known}")),
                    key,
                }
            }
        }
    })?;
    config.source = Some(origin.to_path_buf());
    Ok(config)
}

/// Expands `${VAR}` in every string of the tree at key path `key`.
fn expand_tree(
    node: &mut Node,
    key: &str,
    origin: &Path,
    env: &Lookup<'_>,
) -> Result<(), ConfigError> {
    match node {
        Node::Str(text) => {
            let (value, used_env) = expand(text, env).map_err(|err| match err {
                ExpandError::Unset(variable) => ConfigError::UnsetVariable {
                    path: origin.to_path_buf(),
                    key: key.to_owned(),
                    variable,
                },
                ExpandError::Malformed(message) => ConfigError::invalid(Some(origin), key, message),
            })?;
            *node = if used_env {
                Node::Env(value)
            } else {
                Node::Str(value)
            };
        }
        Node::List(items) => {
            for (index, item) in items.iter_mut().enumerate() {
                expand_tree(item, &format!("{key}[{index}]"), origin, env)?;
            }
        }
        Node::Table(entries) => {
            for (name, value) in entries {
                let dot = if key.is_empty() { "" } else { "." };
                expand_tree(value, &format!("{key}{dot}{name}"), origin, env)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// A decoding error before the key path is attached.
#[derive(Debug, thiserror::Error)]
pub(super) enum DeError {
    /// What is wrong with the value.
    #[error("{0}")]
    Message(String),
    /// A key no field has; `field` is the key as written.
    #[error("unknown key {field}")]
    UnknownKey {
        field: String,
        suggestion: Option<&'static str>,
    },
}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(message: T) -> Self {
        Self::Message(message.to_string())
    }

    /// Never quotes the value, which may be a secret.
    fn invalid_type(unexpected: Unexpected<'_>, expected: &dyn Expected) -> Self {
        let got = match unexpected {
            Unexpected::Unit | Unexpected::Option => "nothing (null)",
            Unexpected::Bool(_) => "a boolean",
            Unexpected::Signed(_) | Unexpected::Unsigned(_) => "an integer",
            Unexpected::Float(_) => "a float",
            Unexpected::Seq => "a list",
            Unexpected::Map => "a table",
            Unexpected::Other(kind) => kind,
            _ => "a string",
        };
        // Serde's words for `worker.queues` (the only list fq reads) and `database`.
        let expected = match expected.to_string() {
            serde if serde == "a sequence" => "a list of strings".to_owned(),
            serde if serde == "path string" => "a string".to_owned(),
            expected => expected,
        };
        // YAML reads an unquoted `password: 0123` as the integer 123: converting it back would
        // silently change it, so it is refused with the fix.
        let scalar = matches!(got, "a boolean" | "an integer" | "a float");
        let hint = " (quote the value to make it a string)";
        let hint = if expected == "a string" && scalar {
            hint
        } else {
            ""
        };
        Self::Message(format!("expected {expected}, got {got}{hint}"))
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        Self::UnknownKey {
            field: field.to_owned(),
            suggestion: closest(field, expected),
        }
    }
}

impl<'de> IntoDeserializer<'de, DeError> for Node {
    type Deserializer = Node;

    fn into_deserializer(self) -> Node {
        self
    }
}

/// One integer method: the range comes from the type the key asks for.
macro_rules! integers {
    ($($method:ident $visit:ident $ty:ty),*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
            let number = self.integer()?;
            let (min, max) = (i128::from(<$ty>::MIN), i128::from(<$ty>::MAX));
            let number = <$ty>::try_from(number).map_err(|_| DeError::Message(match number {
                _ if number < 0 && min == 0 => format!("must not be negative, got {number}"),
                _ if number < min => format!("must be at least {min}, got {number}"),
                _ => format!("must be at most {max}, got {number}"),
            }))?;
            visitor.$visit(number)
        }
    )*};
}

impl<'de> Deserializer<'de> for Node {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self {
            Node::Null => visitor.visit_unit(),
            Node::Bool(flag) => visitor.visit_bool(flag),
            Node::Int(number) => match (i64::try_from(number), u64::try_from(number)) {
                (Ok(number), _) => visitor.visit_i64(number),
                (_, Ok(number)) => visitor.visit_u64(number),
                _ => visitor.visit_i128(number),
            },
            Node::Float(number) => visitor.visit_f64(number),
            Node::Str(text) | Node::Env(text) => visitor.visit_string(text),
            Node::List(items) => SeqDeserializer::new(items.into_iter()).deserialize_any(visitor),
            Node::Table(entries) => {
                MapDeserializer::new(entries.into_iter()).deserialize_any(visitor)
            }
            Node::Other(kind) => Err(de::Error::invalid_type(Unexpected::Other(kind), &visitor)),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self {
            Node::Null => visitor.visit_none(),
            other => visitor.visit_some(other),
        }
    }

    /// A section: a table, or null for an empty one (YAML `worker:` with nothing under it); a
    /// list is refused although serde could read a struct from one. A `Duration` is read fq's
    /// way (`"1h30m"` or whole seconds; serde's own is a `{secs, nanos}` table) and handed to
    /// serde's impl as that table.
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        match self {
            node if name == "Duration" => {
                let duration = node.duration()?;
                let secs = Node::Int(duration.as_secs().into());
                let nanos = Node::Int(duration.subsec_nanos().into());
                let table = [("secs", secs), ("nanos", nanos)].into_iter();
                MapDeserializer::new(table).deserialize_any(visitor)
            }
            Node::Null => Node::Table(Vec::new()).deserialize_any(visitor),
            table @ Node::Table(_) => table.deserialize_any(visitor),
            other => Err(de::Error::invalid_type(
                Unexpected::Other(other.kind()),
                &visitor,
            )),
        }
    }

    integers!(
        deserialize_i32 visit_i32 i32,
        deserialize_u16 visit_u16 u16,
        deserialize_u32 visit_u32 u32,
        deserialize_u64 visit_u64 u64
    );

    serde::forward_to_deserialize_any! {
        bool i8 i16 i64 i128 u8 u128 f32 f64 char str string bytes byte_buf unit unit_struct
        newtype_struct seq tuple tuple_struct map enum identifier ignored_any
    }
}

/// Field adapter for `#[serde(deserialize_with)]`: fq's reading of an address (`localhost:PORT`).
pub(super) fn listen<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<SocketAddr>, D::Error> {
    Option::<String>::deserialize(deserializer)?
        .map(|text| parse_listen(&text).map_err(de::Error::custom))
        .transpose()
}

impl<'de> Deserialize<'de> for BrokerKind {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(de::Error::custom)
    }
}

/// The known key closest to `key` when it looks like a typo of it (edit distance at most 2,
/// and less than a third of the key's length for short keys).
pub(super) fn closest(key: &str, known: &[&'static str]) -> Option<&'static str> {
    known
        .iter()
        .map(|&candidate| (strsim::levenshtein(key, candidate), candidate))
        .filter(|&(distance, _)| distance <= 2 && distance * 3 <= key.chars().count().max(3))
        .min_by_key(|&(distance, _)| distance)
        .map(|(_, candidate)| candidate)
}
