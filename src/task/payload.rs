//! Task arguments in Framefox's shape, `{"args": [...], "kwargs": {...}}`, kept as JSON text so
//! they are stored and handed to a handler without being parsed on the way.

use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// Why a payload was refused or could not be decoded into a task's arguments.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum PayloadError {
    /// The text is not JSON.
    #[error("payload is not valid JSON: {0}")]
    NotJson(String),
    /// The JSON is not `{"args": [...], "kwargs": {...}}`.
    #[error("payload must be an object {{\"args\": [...], \"kwargs\": {{...}}}}: {0}")]
    Shape(String),
    /// The arguments do not fit the task's argument type.
    #[error("arguments do not match the task: {0}")]
    Arguments(String),
    /// Nested deeper than a worker can read back.
    #[error(
        "payload is nested {depth} levels deep; a worker reads at most {MAX_PAYLOAD_DEPTH} \
         (serde_json's recursion limit), so it could never run"
    )]
    TooDeep {
        /// How deep the payload is nested, counting its outer object.
        depth: usize,
    },
}

/// The deepest nesting of arrays and objects a stored payload may have, counting its outer
/// `{"args", "kwargs"}` object: serde_json, which decodes the arguments for a handler, refuses
/// anything deeper, so a deeper payload is refused when it is queued instead of failing every
/// attempt.
pub const MAX_PAYLOAD_DEPTH: usize = 127;

/// The arguments of one task: positional `args` and keyword `kwargs`, as JSON text.
#[derive(Clone, PartialEq, Eq)]
pub struct Payload {
    json: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PayloadShape<'a> {
    #[serde(default, borrow)]
    args: Option<&'a RawValue>,
    #[serde(default, borrow)]
    kwargs: Option<&'a RawValue>,
}

/// A payload's normalized form: both keys, `args` first, compact.
#[derive(Serialize)]
struct NormalShape<'a> {
    args: &'a Value,
    kwargs: &'a Value,
}

static NO_ARGS: Value = Value::Array(Vec::new());
static NO_KWARGS: std::sync::LazyLock<Value> =
    std::sync::LazyLock::new(|| Value::Object(Map::new()));

impl Payload {
    /// No arguments at all.
    pub fn empty() -> Self {
        Self {
            json: r#"{"args":[],"kwargs":{}}"#.to_owned(),
        }
    }

    /// A payload whose kwargs are `kwargs` serialized (a Rust task's struct is its kwargs).
    ///
    /// # Errors
    /// When `kwargs` does not serialize to a JSON object.
    pub fn from_kwargs<T: Serialize + ?Sized>(kwargs: &T) -> Result<Self, PayloadError> {
        let text =
            serde_json::to_string(kwargs).map_err(|e| PayloadError::Arguments(e.to_string()))?;
        if !text.starts_with('{') {
            return Err(PayloadError::Shape(
                "a task's kwargs must serialize to a JSON object (a struct or a map)".into(),
            ));
        }
        Self::checked(format!(r#"{{"args":[],"kwargs":{text}}}"#))
    }

    /// A payload from positional and keyword arguments.
    pub fn from_parts(args: Vec<Value>, kwargs: Map<String, Value>) -> Self {
        let mut shape = Map::new();
        shape.insert("args".into(), Value::Array(args));
        shape.insert("kwargs".into(), Value::Object(kwargs));
        let json = Value::Object(shape).to_string();
        Self { json }
    }

    /// Checks and normalizes a payload given as JSON text.
    ///
    /// # Errors
    /// When the text is not JSON, or not an object holding only `args` (an array) and `kwargs`
    /// (an object); either may be left out.
    pub fn from_json_str(text: &str) -> Result<Self, PayloadError> {
        let value: Value =
            serde_json::from_str(text).map_err(|e| PayloadError::NotJson(e.to_string()))?;
        Self::from_value(&value)
    }

    /// How fq's messages name the kind of a JSON value (`null`, `a boolean`, `a number`,
    /// `a string`, `an array`, `an object`), for tools that check arguments before they
    /// build a payload, in the same words.
    pub fn kind_of(value: &Value) -> &'static str {
        match value {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Number(_) => "a number",
            Value::String(_) => "a string",
            Value::Array(_) => "an array",
            Value::Object(_) => "an object",
        }
    }

    /// Checks a payload given as a JSON value (see [`Payload::from_json_str`]).
    ///
    /// # Errors
    /// As [`Payload::from_json_str`].
    pub fn from_value(value: &Value) -> Result<Self, PayloadError> {
        let Value::Object(fields) = value else {
            return Err(PayloadError::Shape(format!(
                "got {}",
                Payload::kind_of(value)
            )));
        };
        if let Some(unknown) = fields.keys().find(|k| *k != "args" && *k != "kwargs") {
            return Err(PayloadError::Shape(format!(
                "unknown key {unknown:?}; put keyword arguments under \"kwargs\""
            )));
        }
        let args = match fields.get("args") {
            None | Some(Value::Null) => &NO_ARGS,
            Some(args @ Value::Array(_)) => args,
            Some(other) => {
                return Err(PayloadError::Shape(format!(
                    "\"args\" must be an array, got {}",
                    Payload::kind_of(other)
                )));
            }
        };
        let kwargs = match fields.get("kwargs") {
            None | Some(Value::Null) => &*NO_KWARGS,
            Some(kwargs @ Value::Object(_)) => kwargs,
            Some(other) => {
                return Err(PayloadError::Shape(format!(
                    "\"kwargs\" must be an object, got {}",
                    Payload::kind_of(other)
                )));
            }
        };
        // Written from the caller's value, not a copy of it: this runs on every enqueue.
        let json = serde_json::to_string(&NormalShape { args, kwargs })
            .map_err(|e| PayloadError::Arguments(e.to_string()))?;
        Self::checked(json)
    }

    /// A payload from its normalized text, refused when it nests deeper than a worker reads.
    fn checked(json: String) -> Result<Self, PayloadError> {
        let depth = nesting_depth(&json);
        if depth > MAX_PAYLOAD_DEPTH {
            return Err(PayloadError::TooDeep { depth });
        }
        Ok(Self { json })
    }

    /// Rebuilds a payload from text this crate produced and stored.
    pub(crate) fn from_trusted(json: String) -> Self {
        Self { json }
    }

    /// The payload as JSON text.
    pub fn as_str(&self) -> &str {
        &self.json
    }

    /// The payload's size in bytes, as counted against the payload limit.
    pub fn len(&self) -> usize {
        self.json.len()
    }

    /// True when the payload text is empty (never for a checked payload).
    pub fn is_empty(&self) -> bool {
        self.json.is_empty()
    }

    /// The payload as a JSON value.
    pub fn to_value(&self) -> Value {
        serde_json::from_str(&self.json).unwrap_or(Value::Null)
    }

    /// Decodes the arguments into a task's type: from kwargs, or from args when only
    /// positional arguments were given.
    ///
    /// # Errors
    /// When the arguments do not deserialize into `T`, naming the field serde complains about.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, PayloadError> {
        let shape: PayloadShape<'_> =
            serde_json::from_str(&self.json).map_err(|e| PayloadError::Shape(e.to_string()))?;
        let args = shape.args.map_or("[]", RawValue::get);
        let kwargs = shape.kwargs.map_or("{}", RawValue::get);
        let has_args = args.trim() != "[]";
        let has_kwargs = kwargs.trim() != "{}";
        let source = match (has_args, has_kwargs) {
            (true, true) => {
                return Err(PayloadError::Arguments(
                    "a typed task takes either positional args or kwargs, not both".into(),
                ));
            }
            (true, false) => args,
            _ => kwargs,
        };
        serde_json::from_str(source).map_err(|e| PayloadError::Arguments(e.to_string()))
    }
}

/// The deepest nesting of arrays and objects in JSON text (brackets inside strings do not
/// count); the text is JSON this module wrote, so it is well formed.
fn nesting_depth(json: &str) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for byte in json.bytes() {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Payload").field(&self.json).finish()
    }
}

impl fmt::Display for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.json)
    }
}

impl Serialize for Payload {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match RawValue::from_string(self.json.clone()) {
            Ok(raw) => raw.serialize(serializer),
            Err(e) => Err(serde::ser::Error::custom(e)),
        }
    }
}

/// Checks the shape as [`Payload::from_value`] does: a payload read from JSON is always
/// `{"args": [...], "kwargs": {...}}`.
impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        Self::from_value(&value).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Email {
        to: String,
        subject: String,
    }

    #[test]
    fn kwargs_round_trip_through_a_struct() {
        let email = Email {
            to: "a@example.com".into(),
            subject: "hi".into(),
        };
        let payload = Payload::from_kwargs(&email).unwrap();
        assert_eq!(
            payload.to_value(),
            json!({"args": [], "kwargs": {"to": "a@example.com", "subject": "hi"}})
        );
        assert_eq!(payload.decode::<Email>().unwrap(), email);
    }

    /// The normalized text is what is stored, shown (`fq show`, the control protocol) and sent
    /// to RabbitMQ, so building it from a borrowed value must give exactly the text the
    /// whole-map form of `from_parts` gives.
    #[test]
    fn a_value_normalizes_to_the_same_text_as_its_parts() {
        let cases = [
            json!({"kwargs": {"z": 1, "a": [1.5, -0.0, 1e300], "m": {"\u{e9}\n\"\u{1}": null}}, "args": ["x", {"b": true}]}),
            json!({"args": [1, 2, 3]}),
            json!({"kwargs": {"to": "a@example.com"}}),
            json!({"args": null, "kwargs": null}),
            json!({}),
        ];
        for value in cases {
            let args = match &value["args"] {
                Value::Array(args) => args.clone(),
                _ => Vec::new(),
            };
            let kwargs = match &value["kwargs"] {
                Value::Object(kwargs) => kwargs.clone(),
                _ => Map::new(),
            };
            let parts = Payload::from_parts(args, kwargs);
            assert_eq!(
                Payload::from_value(&value).unwrap().as_str(),
                parts.as_str()
            );
        }
        assert_eq!(
            Payload::from_value(&json!({})).unwrap().as_str(),
            r#"{"args":[],"kwargs":{}}"#
        );
    }

    #[test]
    fn positional_args_fill_a_struct_in_order() {
        let payload = Payload::from_json_str(r#"{"args": ["b@example.com", "yo"]}"#).unwrap();
        let email: Email = payload.decode().unwrap();
        assert_eq!(email.to, "b@example.com");
        assert_eq!(email.subject, "yo");
    }

    #[test]
    fn bad_shapes_and_bad_arguments_are_named() {
        assert!(matches!(
            Payload::from_json_str("{not json"),
            Err(PayloadError::NotJson(_))
        ));
        assert!(matches!(
            Payload::from_json_str(r#"{"kwarg": {}}"#),
            Err(PayloadError::Shape(_))
        ));
        assert!(matches!(
            Payload::from_json_str(r#"{"args": {}}"#),
            Err(PayloadError::Shape(_))
        ));
        assert!(matches!(
            Payload::from_json_str(r#"{"kwargs": [1]}"#),
            Err(PayloadError::Shape(_))
        ));
        assert!(matches!(
            Payload::from_json_str("[1,2]"),
            Err(PayloadError::Shape(_))
        ));
        assert!(Payload::from_kwargs(&5).is_err());
        let wrong = Payload::from_json_str(r#"{"kwargs": {"to": 5, "subject": "x"}}"#).unwrap();
        let err = wrong.decode::<Email>().unwrap_err().to_string();
        assert!(err.contains("invalid type"), "{err}");
        let missing = Payload::from_json_str(r#"{"kwargs": {"to": "x"}}"#).unwrap();
        assert!(
            missing
                .decode::<Email>()
                .unwrap_err()
                .to_string()
                .contains("subject")
        );
    }

    #[test]
    fn serializes_as_embedded_json() {
        let payload = Payload::from_json_str(r#"{"kwargs": {"n": 1}}"#).unwrap();
        let text = serde_json::to_string(&json!({"p": payload.to_value()})).unwrap();
        assert_eq!(text, r#"{"p":{"args":[],"kwargs":{"n":1}}}"#);
        assert_eq!(
            serde_json::to_string(&payload).unwrap(),
            r#"{"args":[],"kwargs":{"n":1}}"#
        );
        let back: Payload = serde_json::from_str(r#"{"kwargs": {"n": 1}}"#).unwrap();
        assert_eq!(back, payload);
        assert!(serde_json::from_str::<Payload>(r#"{"kwarg": {}}"#).is_err());
    }

    /// `{"args": [], "kwargs": {"x": [[...[]...]]}}` nested `depth` levels in all.
    fn nested(depth: usize) -> Value {
        let mut inner = Value::Array(Vec::new());
        for _ in 0..depth.saturating_sub(3) {
            inner = Value::Array(vec![inner]);
        }
        json!({"args": [], "kwargs": {"x": inner}})
    }

    #[test]
    fn the_depth_limit_is_exactly_what_serde_json_reads_back() {
        let deepest = nested(MAX_PAYLOAD_DEPTH).to_string();
        assert_eq!(nesting_depth(&deepest), MAX_PAYLOAD_DEPTH);
        assert!(serde_json::from_str::<Value>(&deepest).is_ok());
        let deeper = nested(MAX_PAYLOAD_DEPTH + 1).to_string();
        let error = serde_json::from_str::<Value>(&deeper).unwrap_err();
        assert!(error.to_string().contains("recursion limit"), "{error}");
    }

    #[test]
    fn payloads_a_worker_cannot_read_are_refused_when_built() {
        let deepest = Payload::from_value(&nested(MAX_PAYLOAD_DEPTH)).unwrap();
        assert!(
            deepest.to_value().is_object(),
            "a worker reads the deepest allowed"
        );
        for depth in [MAX_PAYLOAD_DEPTH + 1, 200] {
            match Payload::from_value(&nested(depth)) {
                Err(PayloadError::TooDeep { depth: reported }) => assert_eq!(reported, depth),
                other => panic!("depth {depth}: {other:?}"),
            }
            let kwargs = &nested(depth)["kwargs"];
            assert!(matches!(
                Payload::from_kwargs(kwargs),
                Err(PayloadError::TooDeep { .. })
            ));
        }
        let message = PayloadError::TooDeep { depth: 200 }.to_string();
        assert!(
            message.contains("200") && message.contains("127"),
            "{message}"
        );
    }

    #[test]
    fn brackets_inside_strings_do_not_count() {
        let text = json!({"args": ["[[[[{{{{\\\"]]"], "kwargs": {"k": "}}}"}}).to_string();
        assert_eq!(nesting_depth(&text), 2);
    }
}
