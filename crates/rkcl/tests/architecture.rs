//! ARCHITECTURE.md stays true of the code: its layers are the `use` lines'
//! dependency direction (no cycles), and its code map has one entry per
//! module of the library.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The layers listed under "Dependency direction" in ARCHITECTURE.md,
/// lowest first: module name → rank.
fn layers() -> BTreeMap<String, usize> {
    let text = std::fs::read_to_string(Path::new(ROOT).join("../../ARCHITECTURE.md")).unwrap();
    let section = text
        .split("## Dependency direction")
        .nth(1)
        .expect("ARCHITECTURE.md has a 'Dependency direction' section");
    let block = section
        .split("```text")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("the section lists the layers in a text block");
    let mut ranks = BTreeMap::new();
    for (rank, line) in block.lines().filter(|l| !l.trim().is_empty()).enumerate() {
        let (_, modules) = line.split_once('.').expect("'N. a, b' lines");
        for module in modules.split(',') {
            ranks.insert(module.trim().to_owned(), rank);
        }
    }
    ranks
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a source file belongs to (`None` for `lib.rs`).
fn module_of(path: &Path) -> Option<String> {
    let relative = path.strip_prefix(Path::new(ROOT).join("src")).unwrap();
    let first = relative.components().next()?.as_os_str().to_str()?;
    (first != "lib.rs").then(|| first.trim_end_matches(".rs").to_owned())
}

/// Whether a file is test code (unit tests in their own file).
fn is_test_file(path: &Path) -> bool {
    path.file_name().is_some_and(|n| n == "tests.rs")
}

/// The first path segment after each `crate::` in code (comments skipped),
/// including every item of a `crate::{a, b::c}` group.
fn crate_references(source: &str) -> Vec<String> {
    let code: String = source
        .lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut found = Vec::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let mut item = String::new();
            let mut at_item_start = true;
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    ',' if depth == 1 => at_item_start = true,
                    c if at_item_start && (c.is_alphanumeric() || c == '_') => item.push(c),
                    _ if at_item_start && !item.is_empty() => {
                        found.push(std::mem::take(&mut item));
                        at_item_start = false;
                    }
                    _ => {}
                }
            }
            if !item.is_empty() {
                found.push(item);
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            found.push(name);
        }
    }
    found
}

#[test]
fn modules_use_only_the_layers_below_them() {
    let ranks = layers();
    let mut files = Vec::new();
    sources(&Path::new(ROOT).join("src"), &mut files);
    let mut modules = BTreeSet::new();
    let mut violations = Vec::new();
    for file in files {
        let Some(module) = module_of(&file) else {
            continue;
        };
        modules.insert(module.clone());
        if is_test_file(&file) {
            continue;
        }
        let Some(&rank) = ranks.get(&module) else {
            violations.push(format!(
                "module `{module}` is in no layer of ARCHITECTURE.md"
            ));
            continue;
        };
        let source = std::fs::read_to_string(&file).unwrap();
        // Unit tests at the bottom of a file may reach anywhere.
        let source = source.split("#[cfg(test)]\nmod tests").next().unwrap();
        for target in crate_references(source) {
            if target.starts_with(char::is_uppercase) {
                violations.push(format!(
                    "{}: `crate::{target}` names a root re-export; name the module",
                    file.display()
                ));
                continue;
            }
            if target == module {
                continue;
            }
            match ranks.get(&target) {
                Some(&to) if to < rank => {}
                Some(_) => violations.push(format!(
                    "{}: `{module}` uses `{target}`, which is not below it",
                    file.display()
                )),
                None => violations.push(format!(
                    "{}: `{module}` uses `{target}`, which is in no layer",
                    file.display()
                )),
            }
        }
    }
    let listed: BTreeSet<String> = ranks.keys().cloned().collect();
    for gone in listed.difference(&modules) {
        violations.push(format!(
            "ARCHITECTURE.md lists `{gone}`, which does not exist"
        ));
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

#[test]
fn the_code_map_has_one_entry_per_module() {
    let text = std::fs::read_to_string(Path::new(ROOT).join("../../ARCHITECTURE.md")).unwrap();
    let mut files = Vec::new();
    sources(&Path::new(ROOT).join("src"), &mut files);
    let modules: BTreeSet<String> = files.iter().filter_map(|f| module_of(f)).collect();
    let src = Path::new(ROOT).join("src");
    let missing: Vec<_> = modules
        .iter()
        .filter(|module| {
            let heading = if src.join(module.as_str()).is_dir() {
                format!("### `crates/rkcl/src/{module}/`")
            } else {
                format!("### `crates/rkcl/src/{module}.rs`")
            };
            !text.contains(&heading)
        })
        .collect();
    assert!(missing.is_empty(), "no code-map entry for {missing:?}");
}

#[test]
fn references_are_found_in_groups_and_paths() {
    let found = crate_references(
        "use crate::leases::{Lease, LeaseStore};\nuse crate::{aws::Kinesis, model};\n\
         // crate::nothing in a comment\nlet x = crate::metrics::ALL;",
    );
    assert_eq!(found, ["leases", "aws", "model", "metrics"]);
}

#[test]
fn the_readme_lists_every_metric_of_the_catalogue() {
    let readme = std::fs::read_to_string(Path::new(ROOT).join("../../README.md")).unwrap();
    let rows: Vec<&str> = readme
        .lines()
        .filter(|l| l.starts_with("| `rkcl_"))
        .collect();
    assert_eq!(rows.len(), rkcl::metrics::ALL.len(), "one row per metric");
    for metric in rkcl::metrics::ALL {
        let row = rows
            .iter()
            .find(|r| r.starts_with(&format!("| `{}` |", metric.name)))
            .unwrap_or_else(|| panic!("no README row for {}", metric.name));
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let kind = format!("{:?}", metric.kind).to_lowercase();
        assert_eq!(cells[2], kind, "kind of {}", metric.name);
        assert_eq!(cells[3], metric.unit.as_str(), "unit of {}", metric.name);
        let labels: Vec<String> = metric.labels.iter().map(|l| format!("`{l}`")).collect();
        assert_eq!(cells[4], labels.join(", "), "labels of {}", metric.name);
    }
}
