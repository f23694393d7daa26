//! The rule for task and queue names: 1 to 255 bytes of `[A-Za-z0-9._:-]`.

/// The longest task or queue name, in bytes.
pub(crate) const MAX_NAME_BYTES: usize = 255;

/// Checks a task or queue name; the message says what is wrong with it.
pub(crate) fn check_name(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty".into());
    }
    if value.len() > MAX_NAME_BYTES {
        return Err(format!(
            "is {} bytes long, the limit is {MAX_NAME_BYTES}",
            value.len()
        ));
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
    {
        return Err(format!(
            "contains {bad:?}; only letters, digits and . _ : - are allowed"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_framefox_names_and_rejects_bad_ones() {
        assert!(check_name("myapp.tasks.send_email").is_ok());
        assert!(check_name("high_priority").is_ok());
        assert!(check_name("a:b-c").is_ok());
        assert!(check_name("").unwrap_err().contains("empty"));
        assert!(check_name(&"x".repeat(256)).unwrap_err().contains("255"));
        assert!(check_name("bad name").unwrap_err().contains("' '"));
        assert!(check_name("tab\there").is_err());
        assert!(check_name("é").is_err());
    }
}
