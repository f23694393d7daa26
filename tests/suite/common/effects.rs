//! Reading the effect logs that test handlers append to: `effects-<pid>.log` files of lines
//! "run <task id> <attempt> <pid>", one `write` each, so a line is whole or absent.
#![allow(dead_code, unreachable_pub)]

use std::path::Path;

use fq::TaskId;

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
        for line in text.lines() {
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
