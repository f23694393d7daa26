//! Reading the effect logs that test handlers append to: `effects-<pid>.log` files of lines
//! "run <task id> <attempt> <pid>", one `write` each, so a line is whole or absent.
#![allow(dead_code, unreachable_pub)]

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use fq::TaskId;

/// Appends lines (a newline added) to this process's `effects-<pid>.log` in `dir`, one `write`
/// each, so a line is whole or absent.
pub fn logger(dir: &Path) -> impl Fn(&str) + Send + Sync + Clone + 'static {
    let path = dir.join(format!("effects-{}.log", std::process::id()));
    let file = Arc::new(Mutex::new(
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("open the effect log"),
    ));
    move |line: &str| {
        file.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .write_all(format!("{line}\n").as_bytes())
            .expect("append to the effect log");
    }
}

/// Every run logged in `dir`: (task, attempt, pid).
pub fn runs(dir: &Path) -> Vec<(TaskId, u32, u32)> {
    let mut runs = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read the effect log folder") {
        let path = entry.expect("list the effect log folder").path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !name.starts_with("effects-") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read an effect log");
        // A read racing a live writer's append can see the end of its line missing: only
        // lines with their newline are complete, and each of those must be whole.
        for line in text.split_inclusive('\n') {
            let Some(line) = line.strip_suffix('\n') else {
                continue;
            };
            let fields: Vec<&str> = line.split(' ').collect();
            assert_eq!(fields.len(), 4, "torn effect line {line:?}");
            runs.push((
                fields[1].parse().expect("a task id"),
                fields[2].parse().expect("an attempt"),
                fields[3].parse().expect("a pid"),
            ));
        }
    }
    runs
}
