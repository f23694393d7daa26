//! Unit tests of the wire format: request envelopes, argument errors naming their path, and
//! errors surviving the round trip through error objects. Frames are tested in `frame`.

use super::*;
use crate::task::{TaskId, TaskStatus};

#[test]
fn requests_are_checked_for_shape() {
    let frame = br#"{"id": 7, "op": "claim", "args": {"queues": ["a"]}}"#;
    let parsed = parse_request(frame).unwrap();
    assert_eq!((parsed.id, parsed.op), (7, Op::Claim));
    let args = &frame[parsed.args.unwrap()];
    assert_eq!(args, br#"{"queues": ["a"]}"#);
    let claim: ClaimArgs<'_> = decode_args(Op::Claim, args).unwrap();
    assert_eq!((claim.max, claim.wait_ms), (1, 0));

    let bad = parse_request(b"{nope").unwrap_err();
    assert_eq!((bad.id, bad.error.kind.as_str()), (None, "bad_frame"));
    let bad = parse_request(br#"{"id": 3, "op": 5}"#).unwrap_err();
    assert_eq!((bad.id, bad.error.kind.as_str()), (Some(3), "bad_request"));
    let bad = parse_request(br#"{"id": 4, "op": "fly"}"#).unwrap_err();
    assert_eq!((bad.id, bad.error.kind.as_str()), (Some(4), "unknown_op"));
    assert!(bad.error.message.contains("settle_and_claim"));
}

#[test]
fn argument_errors_name_the_path() {
    let err =
        decode_args::<ClaimArgs<'_>>(Op::Claim, br#"{"queues": ["a"], "max": "x"}"#).unwrap_err();
    let Error::InvalidInput { field, message } = err else {
        panic!("{err:?}")
    };
    assert_eq!(field, "max");
    assert!(
        message.starts_with("claim argument max: invalid type"),
        "{message}"
    );
    let err = decode_args::<EnqueueArgs<WireTask>>(
        Op::Enqueue,
        br#"{"tasks": [{"name": "a"}, {"name": 5}]}"#,
    )
    .unwrap_err();
    assert!(err.to_string().contains("tasks[1].name"), "{err}");
    let err = decode_args::<ClaimArgs<'_>>(Op::Claim, b"").unwrap_err();
    assert!(err.to_string().contains("missing field `queues`"), "{err}");
}

#[test]
fn errors_survive_the_wire() {
    let id = TaskId::new();
    let errors = [
        Error::invalid("queue", "must not be empty"),
        Error::NotFound(id),
        Error::WrongState {
            id,
            status: TaskStatus::Running,
            operation: "cancel",
            allowed: "PENDING or RETRYING tasks",
        },
        Error::StaleAttempt {
            id,
            attempt: 1,
            current: 2,
            status: TaskStatus::Running,
        },
        Error::QueueFull { limit: 10 },
        Error::Poisoned {
            reason: "disk full".into(),
            healing: false,
        },
    ];
    for error in errors {
        let wire = error_to_wire(&error);
        let text = serde_json::to_string(&wire).unwrap();
        let back = error_from_wire(serde_json::from_str(&text).unwrap());
        assert_eq!(back.to_string(), error.to_string(), "{text}");
        assert_eq!(
            std::mem::discriminant(&back),
            std::mem::discriminant(&error),
            "{text}"
        );
    }
    // Whether a poisoned engine heals crosses the socket: a remote worker waits for one that
    // does and stops for one that does not; a server that does not say is taken as not.
    for healing in [true, false] {
        let error = Error::Poisoned {
            reason: "disk full".into(),
            healing,
        };
        let back = error_from_wire(error_to_wire(&error));
        assert!(
            matches!(&back, Error::Poisoned { reason, healing: h } if reason == "disk full" && *h == healing),
            "{back:?}"
        );
    }
    let silent = WireError::new("poisoned", "engine is poisoned: disk full");
    assert!(matches!(
        error_from_wire(silent),
        Error::Poisoned { healing: false, .. }
    ));
    let back = error_from_wire(error_to_wire(&Error::invalid("queue", "bad")));
    assert!(matches!(back, Error::InvalidInput { field: "queue", .. }));
    let remote = error_from_wire(WireError::new("store", "disk on fire"));
    assert!(
        matches!(&remote, Error::Remote { kind, message } if kind == "store" && message == "disk on fire")
    );
    assert_eq!(intern_field("made_up_field"), "made_up_field");
    assert_eq!(intern_field("x".repeat(100).as_str()), "input");
}
