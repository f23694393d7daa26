//! The naming rule for queues and task names (1 to 255 bytes of `[A-Za-z0-9._:-]`), shared by
//! config validation and the engine; it owns only the rule, not where names are used.

/// Longest name allowed, in bytes.
pub(crate) const MAX_NAME_BYTES: usize = 255;

/// Checks a queue or task name: non-empty, at most [`MAX_NAME_BYTES`] bytes, only ASCII letters,
/// digits and `.`, `_`, `:`, `-`.
///
/// # Errors
///
/// A lowercase message saying what is wrong, for the caller to prefix with what the name is for
/// (`defaults.queue: ...`). It quotes the name unless the name is too long to be worth quoting.
pub(crate) fn check_name(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if value.len() > MAX_NAME_BYTES {
        return Err(format!(
            "must be at most {MAX_NAME_BYTES} bytes, got {} bytes",
            value.len()
        ));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-');
    match value.char_indices().find(|&(_, c)| !allowed(c)) {
        Some((at, c)) => Err(format!(
            "{value:?} contains {c:?} at byte {at}; only A-Z, a-z, 0-9 and . _ : - are allowed"
        )),
        None => Ok(()),
    }
}

/// Checks a queue name given to the engine (API, control socket, worker options): the same
/// rule as [`check_name`], as the engine's typed error naming the `queue` field.
///
/// # Errors
///
/// An [`crate::Error::InvalidInput`] for the `queue` field.
pub(crate) fn check_queue(queue: &str) -> crate::Result<()> {
    check_name(queue).map_err(|problem| crate::Error::invalid("queue", problem))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_allowed_alphabet() {
        for name in [
            "default",
            "a",
            "urgent-2",
            "myapp.tasks.send_email",
            "tenant:42",
            "ALL_CAPS",
            "0",
        ] {
            assert_eq!(check_name(name), Ok(()), "{name:?}");
        }
    }

    #[test]
    fn rejects_empty() {
        assert_eq!(check_name(""), Err("must not be empty".to_owned()));
    }

    #[test]
    fn length_limit_is_255_bytes() {
        assert_eq!(check_name(&"q".repeat(255)), Ok(()));
        assert_eq!(
            check_name(&"q".repeat(256)),
            Err("must be at most 255 bytes, got 256 bytes".to_owned())
        );
    }

    #[test]
    fn rejects_other_characters_naming_them() {
        assert_eq!(
            check_name("a b"),
            Err(
                "\"a b\" contains ' ' at byte 1; only A-Z, a-z, 0-9 and . _ : - are allowed"
                    .to_owned()
            )
        );
        for name in ["a/b", "é", "tab\t", "semi;", "star*", "new\nline", "${X}"] {
            assert!(check_name(name).is_err(), "{name:?}");
        }
    }

    #[test]
    fn multibyte_characters_count_as_bytes() {
        // 128 two-byte characters are 256 bytes: the length check fires first.
        let err = check_name(&"é".repeat(128)).expect_err("too long");
        assert!(err.contains("256 bytes"), "{err}");
    }
}
