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

/// The files `Config::load(None)` tries, in order, relative to `dir`.
pub(super) fn candidates(dir: &Path) -> [PathBuf; 2] {
    [
        dir.join("fq.toml"),
        dir.join("config").join("services.yaml"),
    ]
}

/// The first of [`candidates`] that exists, if any.
///
/// # Errors
///
/// `Io` when a candidate's existence cannot be checked (e.g. permission denied): guessing
/// "absent" there would silently run on defaults.
pub(super) fn find(dir: &Path) -> Result<Option<PathBuf>, ConfigError> {
    for path in candidates(dir) {
        match fs::metadata(&path) {
            Ok(_) => return Ok(Some(path)),
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) => {}
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
    // Checked up front: opening a directory succeeds on Unix and fails only at the read, with
    // a platform-specific message.
    if fs::metadata(path).map_err(io_error)?.is_dir() {
        return Err(io_error(io::Error::new(
            io::ErrorKind::IsADirectory,
            "is a directory, not a config file",
        )));
    }
    let mut bytes = Vec::new();
    fs::File::open(path)
        .and_then(|file| file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes))
        .map_err(io_error)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(io_error(io::Error::new(
            io::ErrorKind::FileTooLarge,
            format!("larger than {MAX_FILE_BYTES} bytes; is this really a config file?"),
        )));
    }
    String::from_utf8(bytes).map_err(|err| {
        let valid = err.utf8_error().valid_up_to();
        let text = String::from_utf8_lossy(err.as_bytes());
        // The lossy copy is identical up to `valid`, so the position is the same.
        let (line, column) = line_column(&text, valid);
        ConfigError::Syntax {
            path: path.to_path_buf(),
            line: Some(line),
            column: Some(column),
            message: "the file is not valid UTF-8".to_owned(),
        }
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
    match format {
        Format::Toml => parse_toml(text, origin),
        Format::Yaml => parse_yaml(text, origin),
    }
}

fn parse_toml(text: &str, origin: &Path) -> Result<Vec<(String, Node)>, ConfigError> {
    let table = toml::from_str::<toml::Table>(text).map_err(|err| {
        let position = err.span().map(|span| line_column(text, span.start));
        ConfigError::Syntax {
            path: origin.to_path_buf(),
            line: position.map(|(line, _)| line),
            column: position.map(|(_, column)| column),
            message: err.message().trim_end().to_owned(),
        }
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
    let syntax = |err: serde_norway::Error| {
        let location = err.location();
        let mut message = err.to_string();
        if let Some(location) = &location {
            // The message repeats the position we report separately.
            let suffix = format!(" at line {} column {}", location.line(), location.column());
            message = message.replacen(&suffix, "", 1);
        }
        ConfigError::Syntax {
            path: origin.to_path_buf(),
            line: location.as_ref().map(serde_norway::Location::line),
            column: location.as_ref().map(serde_norway::Location::column),
            message,
        }
    };
    check_flow_depth(text, origin)?;
    let document: serde_norway::Value = serde_norway::from_str(text).map_err(syntax)?;
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
    section.apply_merge().map_err(syntax)?;
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
                        let (line, column) = line_column(text, offset);
                        return Err(ConfigError::Syntax {
                            path: origin.to_path_buf(),
                            line: Some(line),
                            column: Some(column),
                            message: format!(
                                "recursion limit exceeded: flow collections nested deeper than {MAX_FLOW_DEPTH} levels"
                            ),
                        });
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
        Value::Number(number) => {
            if let Some(int) = number.as_i64() {
                Node::Int(int.into())
            } else if let Some(int) = number.as_u64() {
                Node::Int(int.into())
            } else {
                number.as_f64().map_or(Node::Other("a number"), Node::Float)
            }
        }
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

/// 1-based line and column (in characters) of byte `offset` in `text`. An offset past the end
/// or inside a character is clamped back to a character boundary.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn toml(text: &str) -> Result<Vec<(String, Node)>, ConfigError> {
        parse(text, Format::Toml, Path::new("fq.toml"))
    }

    fn yaml(text: &str) -> Result<Vec<(String, Node)>, ConfigError> {
        parse(text, Format::Yaml, Path::new("config/services.yaml"))
    }

    #[test]
    fn format_follows_the_extension() -> TestResult {
        assert_eq!(Format::of(Path::new("fq.toml"))?, Format::Toml);
        assert_eq!(Format::of(Path::new("dir.d/FQ.TOML"))?, Format::Toml);
        assert_eq!(Format::of(Path::new("config/services.yaml"))?, Format::Yaml);
        assert_eq!(Format::of(Path::new("services.yml"))?, Format::Yaml);
        for name in ["fq", "fq.json", "fq.toml.bak", ".toml", "yaml"] {
            let err = Format::of(Path::new(name)).expect_err(name);
            assert!(
                matches!(&err, ConfigError::UnknownFormat { path } if path == Path::new(name)),
                "{name}: {err:?}"
            );
        }
        Ok(())
    }

    #[test]
    fn find_prefers_fq_toml_then_services_yaml() -> TestResult {
        let dir = tempfile::tempdir()?;
        assert_eq!(find(dir.path())?, None);

        fs::create_dir(dir.path().join("config"))?;
        let yaml = dir.path().join("config").join("services.yaml");
        fs::write(&yaml, "task: {}\n")?;
        assert_eq!(find(dir.path())?, Some(yaml));

        let toml = dir.path().join("fq.toml");
        fs::write(&toml, "")?;
        assert_eq!(find(dir.path())?, Some(toml));
        Ok(())
    }

    #[test]
    fn find_treats_a_file_named_config_as_no_yaml() -> TestResult {
        let dir = tempfile::tempdir()?;
        fs::write(dir.path().join("config"), "not a directory")?;
        assert_eq!(find(dir.path())?, None);
        Ok(())
    }

    #[test]
    fn read_missing_file_names_the_path() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("absent.toml");
        let err = read(&path).expect_err("file does not exist");
        let ConfigError::Io {
            path: reported,
            source,
        } = &err
        else {
            return Err(format!("expected Io, got {err:?}").into());
        };
        assert_eq!(reported, &path);
        assert_eq!(source.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().contains("absent.toml"), "{err}");
        Ok(())
    }

    #[test]
    fn read_refuses_a_directory() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("fq.toml");
        fs::create_dir(&path)?;
        let err = read(&path).expect_err("a directory is not a config file");
        let ConfigError::Io {
            path: reported,
            source,
        } = &err
        else {
            return Err(format!("expected Io, got {err:?}").into());
        };
        assert_eq!(reported, &path);
        assert_eq!(source.kind(), io::ErrorKind::IsADirectory);
        Ok(())
    }

    #[test]
    fn read_refuses_huge_files() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("fq.toml");
        fs::write(&path, vec![b'#'; MAX_FILE_BYTES as usize + 1])?;
        let err = read(&path).expect_err("over the cap");
        assert!(
            matches!(&err, ConfigError::Io { source, .. } if source.kind() == io::ErrorKind::FileTooLarge),
            "{err:?}"
        );
        // Exactly at the cap is fine.
        fs::write(&path, vec![b'#'; MAX_FILE_BYTES as usize])?;
        assert_eq!(read(&path)?.len(), MAX_FILE_BYTES as usize);
        Ok(())
    }

    #[test]
    fn read_reports_where_utf8_breaks() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("fq.toml");
        fs::write(&path, b"broker = \"database\"\nqueue = \"d\xffx\"\n")?;
        let err = read(&path).expect_err("not UTF-8");
        assert!(
            matches!(
                &err,
                ConfigError::Syntax {
                    line: Some(2),
                    column: Some(11),
                    ..
                }
            ),
            "{err:?}"
        );
        Ok(())
    }

    #[test]
    fn toml_syntax_error_has_line_and_column() -> TestResult {
        let err =
            toml("broker = \"database\"\n[worker]\nconcurrency = = 3\n").expect_err("bad TOML");
        let ConfigError::Syntax {
            path,
            line,
            column,
            message,
        } = &err
        else {
            return Err(format!("expected Syntax, got {err:?}").into());
        };
        assert_eq!(path, Path::new("fq.toml"));
        assert_eq!(*line, Some(3));
        assert!(column.is_some());
        assert!(!message.is_empty());
        assert!(err.to_string().starts_with("fq.toml:3:"), "{err}");
        Ok(())
    }

    #[test]
    fn toml_duplicate_key_is_a_syntax_error() {
        let err = toml("broker = \"database\"\nbroker = \"rabbitmq\"\n").expect_err("duplicate");
        assert!(
            matches!(&err, ConfigError::Syntax { line: Some(2), .. }),
            "{err:?}"
        );
    }

    #[test]
    fn yaml_syntax_error_has_line_and_column() -> TestResult {
        let err = yaml("task:\n  broker: database\n  worker: [unclosed\n").expect_err("bad YAML");
        let ConfigError::Syntax {
            line,
            column,
            message,
            ..
        } = &err
        else {
            return Err(format!("expected Syntax, got {err:?}").into());
        };
        assert!(line.is_some_and(|line| line >= 3), "{err:?}");
        assert!(column.is_some());
        // The position is reported once, in front, not again at the end of the message.
        assert!(!message.ends_with("at line 4 column 1"), "{message}");
        assert!(
            err.to_string()
                .starts_with("config/services.yaml:4:1: syntax error: "),
            "{err}"
        );
        Ok(())
    }

    #[test]
    fn toml_values_convert() -> TestResult {
        let entries = toml(
            "database = \"a\"\nbroker = \"database\"\n[worker]\nqueues = [\"x\"]\nconcurrency = 4\n\
             [defaults]\npriority = -2\nretry_delay = 1.5\nwhen = 1979-05-27\nflag = true\n",
        )?;
        // `toml::Table` is sorted by key (fq does not enable toml's `preserve_order`).
        let keys: Vec<&str> = entries.iter().map(|(key, _)| key.as_str()).collect();
        assert_eq!(keys, ["broker", "database", "defaults", "worker"]);
        assert_eq!(
            entries[2].1,
            Node::Table(vec![
                ("flag".into(), Node::Bool(true)),
                ("priority".into(), Node::Int(-2)),
                ("retry_delay".into(), Node::Float(1.5)),
                ("when".into(), Node::Other("a datetime")),
            ])
        );
        assert_eq!(
            entries[3].1,
            Node::Table(vec![
                ("concurrency".into(), Node::Int(4)),
                ("queues".into(), Node::List(vec![Node::Str("x".into())])),
            ])
        );
        Ok(())
    }

    #[test]
    fn empty_toml_has_no_entries() -> TestResult {
        assert!(toml("")?.is_empty());
        assert!(toml("# only a comment\n\n")?.is_empty());
        Ok(())
    }

    #[test]
    fn yaml_takes_only_the_task_section() -> TestResult {
        // Everything outside `task:` belongs to Framefox, including tags and variables fq
        // would reject.
        let entries = yaml(
            "database:\n  url: ${DATABASE_URL}\nservices:\n  app.mailer: !service {class: Mailer}\n\
             task:\n  broker: database\n  defaults:\n    queue: default\n",
        )?;
        let keys: Vec<&str> = entries.iter().map(|(key, _)| key.as_str()).collect();
        assert_eq!(keys, ["broker", "defaults"]);
        Ok(())
    }

    #[test]
    fn yaml_without_task_is_missing_section() {
        for text in [
            "services:\n  a: b\n",
            "",
            "# just a comment\n",
            "- a list\n",
            "tasks:\n  broker: database\n",
        ] {
            let err = yaml(text).expect_err("no task section");
            assert!(
                matches!(&err, ConfigError::MissingSection { section, .. } if section == "task"),
                "{text:?}: {err:?}"
            );
        }
    }

    #[test]
    fn yaml_empty_task_section_has_no_entries() -> TestResult {
        assert!(yaml("task:\n")?.is_empty());
        assert!(yaml("task: ~\n")?.is_empty());
        assert!(yaml("task: {}\n")?.is_empty());
        Ok(())
    }

    #[test]
    fn yaml_task_must_be_a_mapping() {
        let err = yaml("task: database\n").expect_err("scalar task");
        assert!(
            matches!(&err, ConfigError::InvalidValue { key, .. } if key == "task"),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "config/services.yaml: task: expected a mapping of fq settings, got a string"
        );
    }

    #[test]
    fn yaml_values_and_keys_convert() -> TestResult {
        let entries = yaml(
            "task:\n  big: 18446744073709551615\n  neg: -3\n  ratio: 0.5\n  none: ~\n  \
             tagged: !custom 5\n  1: numeric key\n  list: [a, 2]\n",
        )?;
        assert_eq!(
            entries,
            vec![
                ("big".into(), Node::Int(u64::MAX.into())),
                ("neg".into(), Node::Int(-3)),
                ("ratio".into(), Node::Float(0.5)),
                ("none".into(), Node::Null),
                ("tagged".into(), Node::Other("a tagged value")),
                ("1".into(), Node::Str("numeric key".into())),
                (
                    "list".into(),
                    Node::List(vec![Node::Str("a".into()), Node::Int(2)])
                ),
            ]
        );
        Ok(())
    }

    #[test]
    fn yaml_merge_keys_are_applied_in_the_task_section() -> TestResult {
        let entries = yaml(
            "base: &base\n  concurrency: 4\n  queues: [default]\n\
             task:\n  worker:\n    <<: *base\n    concurrency: 8\n",
        )?;
        let [(key, Node::Table(worker))] = entries.as_slice() else {
            return Err(format!("unexpected entries {entries:?}").into());
        };
        assert_eq!(key, "worker");
        assert!(worker.contains(&("concurrency".into(), Node::Int(8))));
        assert!(worker.contains(&(
            "queues".into(),
            Node::List(vec![Node::Str("default".into())])
        )));
        assert!(!worker.iter().any(|(key, _)| key == "<<"));
        Ok(())
    }

    #[test]
    fn deep_nesting_is_a_syntax_error_not_a_stack_overflow() {
        // Both parsers cap nesting depth, which also bounds the recursion of `toml_node` and
        // `yaml_node` (the `config_parse` fuzz target relies on this).
        let depth = 1_000;
        let nested = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let err = toml(&format!("a = {nested}")).expect_err("too deep");
        assert!(matches!(err, ConfigError::Syntax { .. }), "{err:?}");
        let err = yaml(&format!("task:\n  a: {nested}")).expect_err("too deep");
        assert!(matches!(err, ConfigError::Syntax { .. }), "{err:?}");
    }

    #[test]
    fn yaml_duplicate_key_is_a_syntax_error() {
        // serde_norway points at the mapping that holds the duplicate, and names the key.
        let err = yaml("task:\n  broker: database\n  broker: rabbitmq\n").expect_err("duplicate");
        assert!(
            matches!(&err, ConfigError::Syntax { line: Some(2), message, .. } if message.contains("\"broker\"")),
            "{err:?}"
        );
    }

    #[test]
    fn line_column_counts_characters_from_one() {
        let text = "ab\ncdé\nf";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 2), (1, 3));
        assert_eq!(line_column(text, 3), (2, 1));
        assert_eq!(line_column(text, 5), (2, 3));
        // Inside the two-byte 'é' clamps back to its start; past the end clamps to the end.
        assert_eq!(line_column(text, 6), (2, 3));
        assert_eq!(line_column(text, 8), (3, 1));
        assert_eq!(line_column(text, 100), (3, 2));
    }
}
