//! Config files on disk: the search order, reading with a size cap, choosing TOML or YAML by
//! extension, parsing into a [`Node`] tree and locating syntax errors. It never interprets fq's
//! keys; that is `decode`'s job.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use super::ConfigError;
use super::decode::Node;

/// The YAML top-level key that holds fq's settings in Framefox's `config/services.yaml`.
pub(super) const YAML_SECTION: &str = "task";

/// Largest config file read, in bytes. A config file is a few hundred bytes; the cap makes a
/// wrong path (`/dev/zero`, a database file) fail at once instead of eating memory.
pub(super) const MAX_FILE_BYTES: u64 = 1 << 20;

/// A config file's format, chosen by its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Format {
    /// `fq.toml`: fq's keys at the top level.
    Toml,
    /// Framefox's `config/services.yaml`: fq's keys under `task:`.
    Yaml,
}

impl Format {
    /// The format for `path`'s extension: `.toml`, or `.yaml`/`.yml` (any letter case).
    ///
    /// # Errors
    ///
    /// `UnknownFormat` for any other extension or none.
    pub(super) fn of(path: &Path) -> Result<Format, ConfigError> {
        let extension = path
            .extension()
            .and_then(|ext| ext.to_str())
            .map(str::to_ascii_lowercase);
        match extension.as_deref() {
            Some("toml") => Ok(Format::Toml),
            Some("yaml" | "yml") => Ok(Format::Yaml),
            _ => Err(ConfigError::UnknownFormat {
                path: path.to_path_buf(),
            }),
        }
    }
}

/// The first of `fq.toml` and `config/services.yaml` in `dir` that exists, if any.
///
/// # Errors
///
/// `Io` when a candidate's existence cannot be checked (e.g. permission denied): guessing
/// "absent" there would silently run on defaults.
pub(super) fn find(dir: &Path) -> Result<Option<PathBuf>, ConfigError> {
    use io::ErrorKind::{NotADirectory, NotFound};
    for path in [dir.join("fq.toml"), dir.join("config/services.yaml")] {
        match fs::metadata(&path) {
            Ok(_) => return Ok(Some(path)),
            Err(err) if [NotFound, NotADirectory].contains(&err.kind()) => {}
            Err(source) => return Err(ConfigError::Io { path, source }),
        }
    }
    Ok(None)
}

/// Reads a config file as UTF-8 text.
///
/// # Errors
///
/// `Io` when the file cannot be opened or read, is a directory, or is larger than
/// [`MAX_FILE_BYTES`]; `Syntax` (with the position) when it is not UTF-8.
pub(super) fn read(path: &Path) -> Result<String, ConfigError> {
    let io_error = |source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    };
    let refuse = |kind, message: String| Err(io_error(io::Error::new(kind, message)));
    // Checked up front: opening a directory succeeds on Unix and fails only at the read, with
    // a platform-specific message.
    if fs::metadata(path).map_err(io_error)?.is_dir() {
        let message = "is a directory, not a config file".to_owned();
        return refuse(io::ErrorKind::IsADirectory, message);
    }
    let mut bytes = Vec::new();
    fs::File::open(path)
        .and_then(|file| file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes))
        .map_err(io_error)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        let message = format!("larger than {MAX_FILE_BYTES} bytes; is this really a config file?");
        return refuse(io::ErrorKind::FileTooLarge, message);
    }
    String::from_utf8(bytes).map_err(|err| {
        let valid = err.utf8_error().valid_up_to();
        let text = String::from_utf8_lossy(err.as_bytes());
        // The lossy copy is identical up to `valid`, so the position is the same.
        let position = Some(line_column(&text, valid));
        syntax(path, position, "the file is not valid UTF-8")
    })
}

/// Parses `text` and returns the entries of fq's section: the whole TOML document, or the
/// `task:` mapping of a YAML one (a `task:` with nothing under it has no entries).
///
/// # Errors
///
/// `Syntax` with the parser's position; for YAML, `MissingSection` when there is no `task:` key
/// (an empty file included) and `InvalidValue` when `task:` is not a mapping.
pub(super) fn parse(
    text: &str,
    format: Format,
    origin: &Path,
) -> Result<Vec<(String, Node)>, ConfigError> {
    if format == Format::Yaml {
        return parse_yaml(text, origin);
    }
    let table = toml::from_str::<toml::Table>(text).map_err(|err| {
        let position = err.span().map(|span| line_column(text, span.start));
        syntax(origin, position, err.message().trim_end().to_owned())
    })?;
    Ok(toml_entries(table))
}

fn toml_entries(table: toml::Table) -> Vec<(String, Node)> {
    table
        .into_iter()
        .map(|(key, value)| (key, toml_node(value)))
        .collect()
}

fn toml_node(value: toml::Value) -> Node {
    match value {
        toml::Value::String(text) => Node::Str(text),
        toml::Value::Integer(number) => Node::Int(number.into()),
        toml::Value::Float(number) => Node::Float(number),
        toml::Value::Boolean(flag) => Node::Bool(flag),
        toml::Value::Datetime(_) => Node::Other("a datetime"),
        toml::Value::Array(items) => Node::List(items.into_iter().map(toml_node).collect()),
        toml::Value::Table(table) => Node::Table(toml_entries(table)),
    }
}

fn parse_yaml(text: &str, origin: &Path) -> Result<Vec<(String, Node)>, ConfigError> {
    let yaml_error = |err: serde_norway::Error| {
        let location = err.location();
        let mut message = err.to_string();
        if let Some(location) = &location {
            // The message repeats the position we report separately.
            let suffix = format!(" at line {} column {}", location.line(), location.column());
            message = message.replacen(&suffix, "", 1);
        }
        let position = location.map(|location| (location.line(), location.column()));
        syntax(origin, position, message)
    };
    check_flow_depth(text, origin)?;
    let document: serde_norway::Value = serde_norway::from_str(text).map_err(yaml_error)?;
    // Only fq's section is looked at: the rest of services.yaml belongs to the web framework.
    let section = match document {
        serde_norway::Value::Mapping(mut mapping) => mapping.remove(YAML_SECTION),
        _ => None,
    };
    let Some(mut section) = section else {
        return Err(ConfigError::MissingSection {
            path: origin.to_path_buf(),
            section: YAML_SECTION.to_owned(),
        });
    };
    section.apply_merge().map_err(yaml_error)?;
    match yaml_node(section) {
        Node::Table(entries) => Ok(entries),
        Node::Null => Ok(Vec::new()),
        other => Err(ConfigError::invalid(
            Some(origin),
            YAML_SECTION,
            format!("expected a mapping of fq settings, got {}", other.kind()),
        )),
    }
}

/// The deepest nesting of YAML flow collections (`[...]`, `{...}`) read. The YAML parser
/// refuses deeper documents itself ("recursion limit exceeded"), but only after a scan whose
/// time grows with the square of the depth: a 1 MiB file of brackets took minutes.
const MAX_FLOW_DEPTH: usize = 128;

/// Refuses a document whose flow collections nest deeper than [`MAX_FLOW_DEPTH`], in one pass
/// that skips quoted scalars and comments.
fn check_flow_depth(text: &str, origin: &Path) -> Result<(), ConfigError> {
    let mut depth = 0usize;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    let mut comment = false;
    let mut previous = '\n';
    for (offset, c) in text.char_indices() {
        if comment {
            comment = c != '\n';
        } else if let Some(open) = quote {
            if escaped {
                escaped = false;
            } else if open == '"' && c == '\\' {
                escaped = true;
            } else if c == open {
                quote = None;
            }
        } else {
            let boundary = previous.is_whitespace() || matches!(previous, '[' | '{' | ',');
            match c {
                '#' if previous.is_whitespace() => comment = true,
                '"' | '\'' if boundary => quote = Some(c),
                '[' | '{' => {
                    depth += 1;
                    if depth > MAX_FLOW_DEPTH {
                        let position = Some(line_column(text, offset));
                        let message = format!(
                            "recursion limit exceeded: flow collections nested deeper than \
                             {MAX_FLOW_DEPTH} levels"
                        );
                        return Err(syntax(origin, position, message));
                    }
                }
                ']' | '}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        previous = c;
    }
    Ok(())
}

fn yaml_node(value: serde_norway::Value) -> Node {
    use serde_norway::Value;
    match value {
        Value::Null => Node::Null,
        Value::Bool(flag) => Node::Bool(flag),
        Value::Number(number) => match (number.as_i64(), number.as_u64(), number.as_f64()) {
            (Some(int), _, _) => Node::Int(int.into()),
            (_, Some(int), _) => Node::Int(int.into()),
            (_, _, Some(float)) => Node::Float(float),
            _ => Node::Other("a number"),
        },
        Value::String(text) => Node::Str(text),
        Value::Sequence(items) => Node::List(items.into_iter().map(yaml_node).collect()),
        Value::Mapping(mapping) => Node::Table(
            mapping
                .into_iter()
                .map(|(key, value)| (yaml_key(key), yaml_node(value)))
                .collect(),
        ),
        Value::Tagged(_) => Node::Other("a tagged value"),
    }
}

/// A mapping key as text. fq's keys are all strings; any other key can only be reported as
/// unknown, so it just needs a readable name.
fn yaml_key(key: serde_norway::Value) -> String {
    use serde_norway::Value;
    match key {
        Value::String(text) => text,
        Value::Number(number) => number.to_string(),
        Value::Bool(flag) => flag.to_string(),
        Value::Null => "null".to_owned(),
        Value::Sequence(_) | Value::Mapping(_) | Value::Tagged(_) => "(complex key)".to_owned(),
    }
}

/// A `Syntax` error at an optional (line, column).
fn syntax(
    path: &Path,
    position: Option<(usize, usize)>,
    message: impl Into<String>,
) -> ConfigError {
    ConfigError::Syntax {
        path: path.to_path_buf(),
        line: position.map(|(line, _)| line),
        column: position.map(|(_, column)| column),
        message: message.into(),
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`. An offset past the end
/// or inside a character is clamped back to a character boundary.
pub(super) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}
