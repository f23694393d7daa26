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
pub fn check_name(value: &str) -> Result<(), String> {
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
