//! What a test expects to find queued: the [`Enqueued`] matcher of
//! `TestEngine::assert_enqueued`, and the listing of waiting tasks that a failed assertion
//! prints. Pure values: reading the store is the test engine's business.

use std::fmt::{self, Write as _};

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;

use crate::handler::Task;
use crate::task::TaskRecord;

/// Which waiting task a test expects: a task type or name, and optionally its queue,
/// arguments, priority and scheduled time. Every condition given must hold; keyword arguments
/// match partially (see [`Enqueued::kwargs`]).
///
/// ```
/// use fq::testing::Enqueued;
/// # #[derive(serde::Serialize, serde::Deserialize)] struct SendEmail { to: String }
/// # impl fq::Task for SendEmail {
/// #     const NAME: &'static str = "myapp.tasks.send_email";
/// #     type Output = ();
/// #     async fn run(self, _: fq::TaskContext) -> Result<(), fq::TaskError> { Ok(()) }
/// # }
/// let by_type = Enqueued::task::<SendEmail>().queue("emails");
/// let by_value = Enqueued::of(&SendEmail { to: "ada@example.com".into() });
/// let by_name = Enqueued::named("myapp.tasks.report")
///     .kwargs(serde_json::json!({"kind": "monthly"}))
///     .priority(5);
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
#[must_use = "a matcher does nothing until it is given to assert_enqueued"]
pub struct Enqueued {
    name: Option<String>,
    queue: Option<String>,
    args: Option<Value>,
    kwargs: Option<Value>,
    priority: Option<i32>,
    scheduled_at: Option<DateTime<Utc>>,
}

impl Enqueued {
    /// Any waiting task (narrow it with the other methods).
    pub fn any() -> Self {
        Self::default()
    }

    /// A task of type `T` (by its `NAME`).
    pub fn task<T: Task>() -> Self {
        Self::named(T::NAME)
    }

    /// A task queued under `name`.
    pub fn named(name: &str) -> Self {
        Self {
            name: Some(name.to_owned()),
            ..Self::default()
        }
    }

    /// A task of type `T` whose keyword arguments hold every field of `task` (a Rust task's
    /// struct is its kwargs). A task that does not serialize to a JSON object matches nothing.
    pub fn of<T: Task>(task: &T) -> Self {
        Self::task::<T>().kwargs(serde_json::to_value(task).unwrap_or(Value::Null))
    }

    /// In this queue.
    pub fn queue(mut self, queue: &str) -> Self {
        self.queue = Some(queue.to_owned());
        self
    }

    /// Whose keyword arguments contain `kwargs`: every key given is there with a matching
    /// value (objects are compared the same way, key by key, so nested ones may be partial
    /// too; arrays and other values must be equal). Keys not given are not looked at.
    pub fn kwargs(mut self, kwargs: Value) -> Self {
        self.kwargs = Some(kwargs);
        self
    }

    /// Whose positional arguments are exactly `args` (a JSON array).
    pub fn args(mut self, args: Value) -> Self {
        self.args = Some(args);
        self
    }

    /// With this priority.
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = Some(priority);
        self
    }

    /// Scheduled for exactly this time: the queue time plus its delay, or its `schedule_at`
    /// (on a test engine's manual clock, times are exact).
    pub fn scheduled_at(mut self, when: DateTime<Utc>) -> Self {
        self.scheduled_at = Some(when);
        self
    }

    /// True when `record` meets every condition.
    pub fn matches(&self, record: &TaskRecord) -> bool {
        let payload = || record.payload.to_value();
        self.name.as_ref().is_none_or(|name| *name == record.name)
            && self
                .queue
                .as_ref()
                .is_none_or(|queue| *queue == record.queue)
            && self.priority.is_none_or(|p| p == record.priority)
            && self.scheduled_at.is_none_or(|at| at == record.scheduled_at)
            && self
                .args
                .as_ref()
                .is_none_or(|args| payload().get("args") == Some(args))
            && self.kwargs.as_ref().is_none_or(|kwargs| {
                payload()
                    .get("kwargs")
                    .is_some_and(|actual| contains(actual, kwargs))
            })
    }
}

/// True when `actual` holds everything `expected` says: objects key by key (recursively),
/// anything else by equality.
fn contains(actual: &Value, expected: &Value) -> bool {
    match (actual, expected) {
        (Value::Object(actual), Value::Object(expected)) => expected
            .iter()
            .all(|(key, want)| actual.get(key).is_some_and(|have| contains(have, want))),
        _ => actual == expected,
    }
}

impl fmt::Display for Enqueued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(name) = &self.name {
            parts.push(format!("name {name:?}"));
        }
        if let Some(queue) = &self.queue {
            parts.push(format!("queue {queue:?}"));
        }
        if let Some(args) = &self.args {
            parts.push(format!("args {args}"));
        }
        if let Some(kwargs) = &self.kwargs {
            parts.push(format!("kwargs containing {kwargs}"));
        }
        if let Some(priority) = self.priority {
            parts.push(format!("priority {priority}"));
        }
        if let Some(at) = self.scheduled_at {
            parts.push(format!("scheduled at {}", timestamp(at)));
        }
        if parts.is_empty() {
            return f.write_str("any task");
        }
        f.write_str(&parts.join(", "))
    }
}

fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The waiting tasks, one line each, for an assertion's message.
pub(super) fn listing(records: &[TaskRecord]) -> String {
    if records.is_empty() {
        return "waiting tasks: none (drained already, or queued on another engine?)".into();
    }
    let mut out = format!("waiting tasks ({}):", records.len());
    for record in records {
        // Writing to a String cannot fail.
        let _ = write!(
            out,
            "\n  {} queue={} priority={} status={} scheduled_at={} due_at={} payload={}",
            record.name,
            record.queue,
            record.priority,
            record.status,
            timestamp(record.scheduled_at),
            timestamp(record.due_at),
            record.payload.as_str(),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn kwargs_match_partially_and_recursively_other_values_exactly() {
        let actual = json!({"to": "ada", "meta": {"lang": "en", "tags": ["a", "b"]}, "n": 1});
        assert!(contains(&actual, &json!({})));
        assert!(contains(&actual, &json!({"to": "ada"})));
        assert!(contains(&actual, &json!({"meta": {"lang": "en"}})));
        assert!(contains(&actual, &json!({"meta": {"tags": ["a", "b"]}})));
        assert!(!contains(&actual, &json!({"meta": {"tags": ["a"]}})));
        assert!(!contains(&actual, &json!({"to": "bob"})));
        assert!(!contains(&actual, &json!({"missing": null})));
        assert!(!contains(&actual, &json!({"n": "1"})));
        assert!(!contains(&json!("x"), &json!({})));
    }

    #[test]
    fn an_empty_matcher_says_so() {
        assert_eq!(Enqueued::any().to_string(), "any task");
        assert_eq!(
            Enqueued::named("a.b")
                .queue("q")
                .kwargs(json!({"k": 1}))
                .to_string(),
            r#"name "a.b", queue "q", kwargs containing {"k":1}"#
        );
    }
}
