//! `cargo xtask layout`: the rules that keep the house as
//! docs/ARCHITECTURE.md draws it, read off the sources' imports.
//!
//! - src/: `record` imports neither `read` nor `analyze`; `read` imports
//!   neither `record` nor `analyze`; `analyze` does not import `record`;
//!   `ffi`, `format` and `fxhash` import nothing of the crate but `ffi`.
//! - xtask/src/: `common` imports no module of xtask; only `main` imports
//!   `ci`; no circle among the modules.
//! - No source file (Rust, Python) over 600 lines unless its opening
//!   comment says why ("One file ...").

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use xshell::Shell;

use crate::common::step;

/// Lines a source file may have without saying why.
const MAX_LINES: usize = 600;

pub fn check(sh: &Shell) -> Result<()> {
    step("layout: imports run one way, files within 600 lines");
    let root = sh.current_dir();
    let mut problems = Vec::new();
    // src/: the parts of the crate, by their top folder or file.
    for file in files(&root.join("src"), "rs") {
        let part = part_of(&root.join("src"), &file);
        let forbidden: &[&str] = match part.as_str() {
            "record" => &["read", "analyze"],
            "read" => &["record", "analyze"],
            "analyze" => &["record"],
            "ffi" | "format" | "fxhash" => &["record", "read", "analyze", "format", "fxhash"],
            _ => &[],
        };
        for used in crate_imports(&std::fs::read_to_string(&file)?) {
            if forbidden.contains(&used.as_str()) {
                problems.push(format!(
                    "{}: {part} imports crate::{used}",
                    rel(&root, &file)
                ));
            }
        }
    }
    // xtask/src/: a graph of modules.
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files(&root.join("xtask/src"), "rs") {
        let module = part_of(&root.join("xtask/src"), &file);
        let text = std::fs::read_to_string(&file)?;
        let uses: BTreeSet<String> = crate_imports(&text)
            .into_iter()
            .filter(|m| *m != module)
            .collect();
        if module == "common" && !uses.is_empty() {
            problems.push(format!(
                "xtask/src/common.rs imports {uses:?}: it is the leaf"
            ));
        }
        if module != "main" && uses.contains("ci") {
            problems.push(format!("xtask/src/{module}.rs imports ci"));
        }
        graph.entry(module).or_default().extend(uses);
    }
    if let Some(circle) = find_circle(&graph) {
        problems.push(format!(
            "xtask/src: a circle of imports: {}",
            circle.join(" -> ")
        ));
    }
    // Sizes.
    let mut sources = files(&root.join("src"), "rs");
    sources.extend(files(&root.join("xtask/src"), "rs"));
    sources.extend(files(&root.join("python"), "py"));
    sources.extend(files(&root.join("tests"), "py"));
    sources.extend(files(&root.join("xtask/bench"), "py"));
    for file in sources {
        let text = std::fs::read_to_string(&file)?;
        let lines = text.lines().count();
        let opening: String = text.lines().take(40).collect::<Vec<_>>().join("\n");
        if lines > MAX_LINES && !opening.contains("One file") {
            problems.push(format!(
                "{}: {lines} lines, over {MAX_LINES}, and its opening comment does not say why (\"One file ...\")",
                rel(&root, &file)
            ));
        }
    }
    if !problems.is_empty() {
        bail!(
            "the layout's rules are broken:\n  {}",
            problems.join("\n  ")
        );
    }
    eprintln!("layout: every rule holds");
    Ok(())
}

/// The files ending in `.ext` under `dir`, sorted.
fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                if !name.starts_with('.') && name != "__pycache__" && name != "snapshots" {
                    stack.push(path);
                }
            } else if path.extension().is_some_and(|e| e == ext) {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The top module a file of `root` belongs to: its first folder, or its
/// name without `.rs` (`lib`, `main`, `format`).
fn part_of(root: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(root).unwrap_or(file);
    let first = rel
        .components()
        .next()
        .map(|c| c.as_os_str().to_string_lossy().into_owned());
    first.unwrap_or_default().trim_end_matches(".rs").to_owned()
}

fn rel(root: &Path, file: &Path) -> String {
    file.strip_prefix(root)
        .unwrap_or(file)
        .display()
        .to_string()
}

/// The crate's top modules that `text` names: `crate::x`, and each name of
/// `use crate::{x, y::z}`. Comments are left out.
fn crate_imports(text: &str) -> BTreeSet<String> {
    let code: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    out.insert(name);
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

/// A circle in `graph` (module -> modules it imports), if any.
fn find_circle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == node) {
            let mut circle = path[at..].to_vec();
            circle.push(node.to_owned());
            return Some(circle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imports_are_read_from_paths_and_groups() {
        let text = "use crate::read::{Event, Kind};\n// crate::record in a comment\nuse crate::{docker, e2e::E2e};\nlet x = crate::fxhash::FxMap::default();";
        let found: Vec<String> = crate_imports(text).into_iter().collect();
        assert_eq!(found, ["docker", "e2e", "fxhash", "read"]);
    }

    #[test]
    fn circles_are_found() {
        let mut graph = BTreeMap::new();
        graph.insert("a".to_owned(), BTreeSet::from(["b".to_owned()]));
        graph.insert("b".to_owned(), BTreeSet::from(["c".to_owned()]));
        graph.insert("c".to_owned(), BTreeSet::new());
        assert_eq!(find_circle(&graph), None);
        graph.get_mut("c").unwrap().insert("a".to_owned());
        assert_eq!(find_circle(&graph).unwrap(), ["a", "b", "c", "a"]);
    }
}
