//! The module layering of `src/` (issue 10, "the redesign"), checked on the source text: every
//! `use crate::…`, `use super::…` and `use redb…` declaration, and every `crate::…`,
//! `super::…` and `redb::…` path written inline (comments and string literals left out,
//! `#[cfg(test)]` code counted), is resolved to the top-level module it names, and each file
//! (`src/queue/ready.rs` belongs to `queue`) may use only what its module's rules allow:
//!
//! - `queue` does not use `store`;
//! - `task` does not use `worker`, `broker`, `engine` (the module, or the `Engine` type through
//!   its re-export at the crate root), `control` or `cli`;
//! - `store` uses nothing but `task`, `error`, `clock`, `sync` (and itself);
//! - only `store` uses `redb`;
//! - `cli` uses only the public API: `crate::cli::…`, names `src/lib.rs` re-exports with
//!   `pub use`, and items declared `pub` in the modules `src/lib.rs` declares `pub mod`;
//! - `web` (the dashboard) likewise: `crate::web::…` and the public API, nothing internal.
//!
//! A name re-exported at the crate root (`crate::Engine`) counts as a use of the module it comes
//! from (`engine`). `src/lib.rs` (the crate root, which wires the modules) and `src/main.rs`
//! (another crate, which sees only the public API) are not checked. A failure names each
//! violation as `file:line: rule (path)`. `the_checker_catches_each_rule` feeds the checker a
//! synthetic source tree breaking every rule once, so the check cannot pass by seeing nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// One broken rule: where, which rule, and the path that broke it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Violation {
    file: String,
    line: usize,
    rule: &'static str,
    path: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}: {} ({})",
            self.file, self.line, self.rule, self.path
        )
    }
}

const QUEUE_STORE: &str = "queue/ must not use store";
const TASK_UPWARD: &str = "task/ must not use worker, broker, engine, control or cli";
const STORE_ONLY: &str = "store/ may use only task, error, clock and sync";
const REDB_ONLY_STORE: &str = "only store/ may use redb";
const WEB_PUBLIC: &str =
    "web/ may use only crate::web and the public API (lib.rs `pub use`, `pub` items of `pub mod`s)";
const CLI_PUBLIC: &str =
    "cli/ may use only crate::cli and the public API (lib.rs `pub use`, `pub` items of `pub mod`s)";

// --- source text ------------------------------------------------------------------------------

/// `source` with comments and the contents of string and character literals blanked out
/// (newlines kept, so byte offsets and line numbers stay).
fn blank_comments_and_literals(source: &str) -> String {
    let b = source.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let blank = |out: &mut Vec<u8>, byte: u8| out.push(if byte == b'\n' { b'\n' } else { b' ' });
    let is_ident = |byte: u8| byte.is_ascii_alphanumeric() || byte == b'_';
    let mut i = 0;
    while i < b.len() {
        let prev_ident = i > 0 && is_ident(b[i - 1]);
        // Line comment.
        if b[i] == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                out.push(b' ');
                i += 1;
            }
            continue;
        }
        // Block comment (nested).
        if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                    depth += 1;
                    out.extend_from_slice(b"  ");
                    i += 2;
                } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                    depth -= 1;
                    out.extend_from_slice(b"  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    blank(&mut out, b[i]);
                    i += 1;
                }
            }
            continue;
        }
        // Raw (byte) string: r"…", r#"…"#, br"…".
        if !prev_ident && (b[i] == b'r' || (b[i] == b'b' && b.get(i + 1) == Some(&b'r'))) {
            let mut j = if b[i] == b'b' { i + 2 } else { i + 1 };
            let mut hashes = 0;
            while b.get(j) == Some(&b'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) == Some(&b'"') {
                out.extend_from_slice(&b[i..=j]);
                j += 1;
                loop {
                    if j >= b.len() {
                        break;
                    }
                    if b[j] == b'"'
                        && b[j + 1..]
                            .iter()
                            .take(hashes)
                            .filter(|&&c| c == b'#')
                            .count()
                            == hashes
                    {
                        out.push(b'"');
                        out.extend(std::iter::repeat_n(b'#', hashes));
                        j += 1 + hashes;
                        break;
                    }
                    blank(&mut out, b[j]);
                    j += 1;
                }
                i = j;
                continue;
            }
        }
        // String (or byte string).
        if b[i] == b'"' {
            out.push(b'"');
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' && i + 1 < b.len() {
                    blank(&mut out, b[i]);
                    blank(&mut out, b[i + 1]);
                    i += 2;
                } else {
                    blank(&mut out, b[i]);
                    i += 1;
                }
            }
            if i < b.len() {
                out.push(b'"');
                i += 1;
            }
            continue;
        }
        // Character literal (a lifetime is copied as it is).
        if b[i] == b'\'' {
            let end = if b.get(i + 1) == Some(&b'\\') {
                b[i + 2..]
                    .iter()
                    .position(|&c| c == b'\'')
                    .map(|p| i + 2 + p)
            } else {
                // One character (1 to 4 bytes of UTF-8) and a closing quote.
                (i + 2..=(i + 5).min(b.len().saturating_sub(1))).find(|&k| {
                    b[k] == b'\''
                        && std::str::from_utf8(&b[i + 1..k]).is_ok_and(|s| s.chars().count() == 1)
                })
            };
            if let Some(end) = end {
                out.push(b'\'');
                for &byte in &b[i + 1..end] {
                    blank(&mut out, byte);
                }
                out.push(b'\'');
                i = end + 1;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Token {
    text: String,
    offset: usize,
}

/// Identifiers, `::`, and single punctuation characters of blanked source text.
fn tokens(text: &str) -> Vec<Token> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] >= 0x80) {
                i += 1;
            }
            out.push(Token {
                text: text[start..i].to_owned(),
                offset: start,
            });
        } else if c == b':' && b.get(i + 1) == Some(&b':') {
            out.push(Token {
                text: "::".into(),
                offset: i,
            });
            i += 2;
        } else {
            out.push(Token {
                text: (c as char).to_string(),
                offset: i,
            });
            i += 1;
        }
    }
    out
}

/// A path named by the source: its segments as written, and where.
#[derive(Clone, Debug)]
struct Named {
    segments: Vec<String>,
    offset: usize,
    /// The module path of the inline `mod` blocks around it, inside the file's own module.
    nesting: Vec<String>,
}

/// Expands the use tree starting at `tokens[*at]` (after `use`) into full paths.
fn use_tree(
    tokens: &[Token],
    at: &mut usize,
    prefix: &[String],
    out: &mut Vec<(Vec<String>, usize)>,
) {
    let mut path = prefix.to_vec();
    let mut offset = tokens.get(*at).map_or(0, |t| t.offset);
    while let Some(token) = tokens.get(*at) {
        match token.text.as_str() {
            "{" => {
                *at += 1;
                loop {
                    use_tree(tokens, at, &path, out);
                    match tokens.get(*at).map(|t| t.text.as_str()) {
                        Some(",") => {
                            *at += 1;
                            if tokens.get(*at).is_some_and(|t| t.text == "}") {
                                *at += 1;
                                return;
                            }
                        }
                        Some("}") => {
                            *at += 1;
                            return;
                        }
                        _ => return,
                    }
                }
            }
            "::" => *at += 1,
            "as" => {
                *at += 2; // the rename
            }
            "," | "}" | ";" => break,
            "self" if path.len() > prefix.len() || !prefix.is_empty() => {
                // `a::{self}` names `a` itself.
                offset = token.offset;
                *at += 1;
            }
            _ => {
                if path.len() == prefix.len() {
                    offset = token.offset;
                }
                path.push(token.text.clone());
                *at += 1;
            }
        }
    }
    if path.len() > prefix.len() || !prefix.is_empty() {
        out.push((path, offset));
    }
}

/// Every path a file names through `use` declarations and inline `crate::`, `super::`,
/// `self::` and `redb::` paths, with the inline `mod` blocks around each.
fn named_paths(blanked: &str) -> (Vec<Named>, Vec<(Vec<String>, bool)>) {
    let tokens = tokens(blanked);
    let mut named = Vec::new();
    // `use` declarations at the file's top level: (leaves, `pub` exactly).
    let mut top_uses = Vec::new();
    let mut nesting: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < tokens.len() {
        let text = tokens[i].text.as_str();
        match text {
            "{" => depth += 1,
            "}" => {
                depth = depth.saturating_sub(1);
                if nesting.last().is_some_and(|(_, d)| *d == depth) {
                    nesting.pop();
                }
            }
            "mod" => {
                if let (Some(name), Some(open)) = (tokens.get(i + 1), tokens.get(i + 2))
                    && open.text == "{"
                {
                    nesting.push((name.text.clone(), depth));
                }
            }
            _ => {}
        }
        let here: Vec<String> = nesting.iter().map(|(n, _)| n.clone()).collect();
        if text == "use" {
            let public = i > 0 && tokens[i - 1].text == "pub";
            let mut at = i + 1;
            let mut leaves = Vec::new();
            use_tree(&tokens, &mut at, &[], &mut leaves);
            for (segments, offset) in leaves {
                if nesting.is_empty() && depth == 0 {
                    top_uses.push((segments.clone(), public));
                }
                named.push(Named {
                    segments,
                    offset,
                    nesting: here.clone(),
                });
            }
            i = at.max(i + 1);
            continue;
        }
        let starts_path = matches!(text, "crate" | "super" | "self" | "redb")
            && tokens.get(i + 1).is_some_and(|t| t.text == "::")
            && !(i > 0 && (tokens[i - 1].text == "::" || tokens[i - 1].text == "$"));
        if starts_path {
            let mut segments = vec![text.to_owned()];
            let mut j = i + 1;
            while tokens.get(j).is_some_and(|t| t.text == "::")
                && tokens
                    .get(j + 1)
                    .is_some_and(|t| t.text.starts_with(|c: char| c.is_alphabetic() || c == '_'))
            {
                segments.push(tokens[j + 1].text.clone());
                j += 2;
            }
            named.push(Named {
                segments,
                offset: tokens[i].offset,
                nesting: here,
            });
            i = j;
            continue;
        }
        i += 1;
    }
    (named, top_uses)
}

// --- the crate's public surface ---------------------------------------------------------------

/// What `src/lib.rs` makes public: root names re-exported with `pub use` (name → the module
/// they come from) and the modules declared `pub mod`.
#[derive(Debug, Default)]
struct Surface {
    reexports: BTreeMap<String, String>,
    pub_mods: BTreeSet<String>,
    /// `pub` items of each `pub mod`'s root file (declared or re-exported).
    pub_items: BTreeMap<String, BTreeSet<String>>,
}

/// The names a file declares or re-exports with plain `pub` at its top level.
fn pub_names(source: &str) -> BTreeSet<String> {
    let blanked = blank_comments_and_literals(source);
    let tokens = tokens(&blanked);
    let mut names = BTreeSet::new();
    let mut depth = 0usize;
    for (i, token) in tokens.iter().enumerate() {
        match token.text.as_str() {
            "{" => depth += 1,
            "}" => depth = depth.saturating_sub(1),
            "pub" if depth == 0 && tokens.get(i + 1).is_some_and(|t| t.text != "(") => {
                let text_at = |k: usize| tokens.get(k).map_or("", |t: &Token| t.text.as_str());
                let mut j = i + 1;
                // `pub const fn`, `pub async unsafe fn`; `pub const NAME: …` stays a const.
                while matches!(text_at(j), "async" | "unsafe" | "extern" | "const")
                    && matches!(
                        text_at(j + 1),
                        "fn" | "async" | "unsafe" | "extern" | "const"
                    )
                {
                    j += 1;
                }
                if let (Some(kind), Some(name)) = (tokens.get(j), tokens.get(j + 1))
                    && matches!(
                        kind.text.as_str(),
                        "fn" | "const"
                            | "static"
                            | "struct"
                            | "enum"
                            | "trait"
                            | "type"
                            | "mod"
                            | "union"
                    )
                {
                    names.insert(name.text.clone());
                }
            }
            _ => {}
        }
    }
    let (_, uses) = named_paths(&blanked);
    for (segments, public) in uses {
        if public && let Some(last) = segments.last() {
            names.insert(last.clone());
        }
    }
    // Renames (`pub use a::b as c`) are rare enough to be read by hand; `as` targets are not
    // resolved.
    names
}

fn surface(lib_rs: &str, module_source: &dyn Fn(&str) -> Option<String>) -> Surface {
    let blanked = blank_comments_and_literals(lib_rs);
    let tokens = tokens(&blanked);
    let mut surface = Surface::default();
    for (i, token) in tokens.iter().enumerate() {
        if token.text == "pub"
            && tokens.get(i + 1).is_some_and(|t| t.text == "mod")
            && let Some(name) = tokens.get(i + 2)
        {
            surface.pub_mods.insert(name.text.clone());
        }
    }
    let (_, uses) = named_paths(&blanked);
    for (segments, public) in uses {
        if public && segments.len() >= 2 {
            surface
                .reexports
                .insert(segments[segments.len() - 1].clone(), segments[0].clone());
        }
    }
    for module in surface.pub_mods.clone() {
        let items = module_source(&module)
            .map(|s| pub_names(&s))
            .unwrap_or_default();
        surface.pub_items.insert(module, items);
    }
    surface
}

// --- the rules --------------------------------------------------------------------------------

/// `queue/ready.rs` → (`queue`, [`queue`, `ready`]); `engine.rs` → (`engine`, [`engine`]);
/// `queue/mod.rs` → (`queue`, [`queue`]). `None` for the crate roots.
fn module_of(file: &str) -> Option<(String, Vec<String>)> {
    let file = file.strip_prefix("src/").unwrap_or(file);
    if file == "lib.rs" || file == "main.rs" {
        return None;
    }
    let mut parts: Vec<String> = file
        .trim_end_matches(".rs")
        .split('/')
        .map(str::to_owned)
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    Some((parts[0].clone(), parts))
}

/// Checks one file (`file` relative to the crate, `src/…`), given the crate's top-level modules
/// and public surface.
fn check_file(
    file: &str,
    source: &str,
    top_modules: &BTreeSet<String>,
    surface: &Surface,
) -> Vec<Violation> {
    let Some((module, module_path)) = module_of(file) else {
        return Vec::new();
    };
    let blanked = blank_comments_and_literals(source);
    let line_of = |offset: usize| blanked[..offset].matches('\n').count() + 1;
    let (named, _) = named_paths(&blanked);
    let mut violations = Vec::new();
    for Named {
        segments,
        offset,
        nesting,
    } in named
    {
        let written = segments.join("::");
        let mut violation = |rule: &'static str| {
            violations.push(Violation {
                file: file.to_owned(),
                line: line_of(offset),
                rule,
                path: written.clone(),
            });
        };
        if segments[0] == "redb" {
            if module != "store" {
                violation(REDB_ONLY_STORE);
            }
            continue;
        }
        // The absolute path (below the crate root) it names.
        let absolute: Vec<String> = match segments[0].as_str() {
            "crate" => segments[1..].to_vec(),
            "super" | "self" => {
                let mut here: Vec<String> = module_path.iter().chain(&nesting).cloned().collect();
                let mut rest = segments.as_slice();
                while let Some(first) = rest.first() {
                    match first.as_str() {
                        "super" => {
                            here.pop();
                        }
                        "self" => {}
                        _ => break,
                    }
                    rest = &rest[1..];
                }
                here.extend(rest.iter().cloned());
                here
            }
            _ => continue, // an extern crate or a name in scope
        };
        let Some(first) = absolute.first() else {
            continue;
        };
        let target = if top_modules.contains(first) {
            first.clone()
        } else if let Some(from) = surface.reexports.get(first) {
            from.clone()
        } else {
            continue; // a macro or an item of the crate root itself
        };
        if target == module {
            continue;
        }
        match module.as_str() {
            "queue" if target == "store" => violation(QUEUE_STORE),
            "task"
                if ["worker", "broker", "engine", "control", "cli"].contains(&target.as_str()) =>
            {
                violation(TASK_UPWARD)
            }
            "store" if !["task", "error", "clock", "sync"].contains(&target.as_str()) => {
                violation(STORE_ONLY)
            }
            "cli" | "web" => {
                let public = surface.reexports.contains_key(first)
                    || (surface.pub_mods.contains(first)
                        && absolute.get(1).is_none_or(|item| {
                            item == "*"
                                || surface
                                    .pub_items
                                    .get(first)
                                    .is_some_and(|items| items.contains(item))
                        }));
                if !public {
                    violation(if module == "cli" {
                        CLI_PUBLIC
                    } else {
                        WEB_PUBLIC
                    });
                }
            }
            _ => {}
        }
    }
    violations
}

/// Every `.rs` file below `dir`, as (`src/…` path, text), in path order.
fn rust_files(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(root, &path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let relative = path.strip_prefix(root).expect("below the root");
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
            out.push((relative.to_string_lossy().replace('\\', "/"), text));
        }
    }
}

/// Checks a whole tree: `files` are (`src/…` path, text), `src/lib.rs` among them.
fn check_tree(files: &[(String, String)]) -> Vec<Violation> {
    let lib_rs = files
        .iter()
        .find(|(path, _)| path == "src/lib.rs")
        .map(|(_, text)| text.as_str())
        .unwrap_or_default();
    let top_modules: BTreeSet<String> = files
        .iter()
        .filter_map(|(path, _)| module_of(path).map(|(module, _)| module))
        .collect();
    let find = |module: &str| {
        files
            .iter()
            .find(|(path, _)| {
                *path == format!("src/{module}.rs") || *path == format!("src/{module}/mod.rs")
            })
            .map(|(_, text)| text.clone())
    };
    let surface = surface(lib_rs, &find);
    files
        .iter()
        .flat_map(|(path, text)| check_file(path, text, &top_modules, &surface))
        .collect()
}

#[test]
fn every_module_uses_only_what_its_layer_allows() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(root, &root.join("src"), &mut files);
    assert!(files.len() > 20, "found only {} source files", files.len());
    let violations = check_tree(&files);
    let paths = files.len();
    println!(
        "architecture: {paths} files of src/ checked, {} violations",
        violations.len()
    );
    assert!(
        violations.is_empty(),
        "{} layering violations:\n{}",
        violations.len(),
        violations
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The negative control: a synthetic tree that breaks every rule once (and a few uses that are
/// allowed, which must not be reported).
#[test]
fn the_checker_catches_each_rule() {
    let lib_rs = r#"
        mod broker;
        pub mod cli;
        pub mod config;
        mod engine;
        mod queue;
        mod store;
        mod task;
        pub mod web;
        pub use engine::Engine;
        pub use task::{TaskId, TaskStatus};
    "#;
    let files: Vec<(String, String)> = [
        ("src/lib.rs", lib_rs),
        ("src/engine.rs", "use crate::store::Store;\npub struct Engine;"),
        ("src/config/mod.rs", "pub fn parse() {}\npub(crate) fn internal() {}\npub use names::check;"),
        (
            "src/queue/ready.rs",
            "// use crate::store::Store; (a comment)\nuse crate::task::TaskId;\nfn f() { let _ = \"crate::store::x\"; }\nuse crate::store::keys;",
        ),
        (
            "src/queue/mod.rs",
            "mod ready;\n#[cfg(test)]\nmod tests {\n    fn t() { super::super::store::open(); }\n}",
        ),
        ("src/task/record.rs", "use crate::{Engine, TaskStatus};\nuse super::id::TaskId;"),
        ("src/task/mod.rs", "fn f() -> crate::broker::Broker { todo!() }"),
        (
            "src/store/mod.rs",
            "use crate::{task::TaskId, config::Config};\nuse redb::Database;\nuse crate::store::keys;",
        ),
        ("src/store/keys.rs", "fn f() { let _ = redb::TableDefinition::new(\"t\"); }"),
        ("src/broker/mod.rs", "fn open() -> redb::Database { todo!() }"),
        (
            "src/cli/mod.rs",
            "use crate::cli::args::Args;\nuse crate::{Engine, TaskId};\nuse crate::config::{parse, internal};\nuse crate::engine::EngineBuilder;\nuse crate::queue;\nuse super::store::Store;",
        ),
        (
            "src/web/pages.rs",
            "use crate::web::Dashboard;\nuse crate::{Engine, TaskId};\nuse crate::engine::EngineBuilder;\nuse crate::config::parse;",
        ),
    ]
    .into_iter()
    .map(|(path, text)| (path.to_owned(), text.to_owned()))
    .collect();
    let mut found: Vec<(String, usize, &str)> = check_tree(&files)
        .into_iter()
        .map(|v| (v.file, v.line, v.rule))
        .collect();
    found.sort();
    let expected: Vec<(String, usize, &str)> = vec![
        ("src/broker/mod.rs", 1, REDB_ONLY_STORE),
        ("src/cli/mod.rs", 3, CLI_PUBLIC),
        ("src/cli/mod.rs", 4, CLI_PUBLIC),
        ("src/cli/mod.rs", 5, CLI_PUBLIC),
        ("src/cli/mod.rs", 6, CLI_PUBLIC),
        ("src/queue/mod.rs", 4, QUEUE_STORE),
        ("src/queue/ready.rs", 4, QUEUE_STORE),
        ("src/store/mod.rs", 1, STORE_ONLY),
        ("src/task/mod.rs", 1, TASK_UPWARD),
        ("src/task/record.rs", 1, TASK_UPWARD),
        ("src/web/pages.rs", 3, WEB_PUBLIC),
    ]
    .into_iter()
    .map(|(f, l, r)| (f.to_owned(), l, r))
    .collect();
    assert_eq!(found, expected);
}

#[test]
fn literals_and_comments_are_not_code() {
    let text = "let a = \"crate::store\"; // crate::store\nlet b = r#\"redb::x\"#; /* redb:: */ let c = 'x'; let d: &'static str = \"\";\nuse crate::store::X;";
    let blanked = blank_comments_and_literals(text);
    assert_eq!(blanked.len(), text.len());
    assert!(!blanked.contains("crate::store\""), "{blanked}");
    assert!(!blanked.contains("redb"), "{blanked}");
    assert!(blanked.contains("&'static str"), "{blanked}");
    assert!(blanked.ends_with("use crate::store::X;"), "{blanked}");
}
