//! The house's walls: which room of `src/` may import which (see `src/lib.rs`, "Layout").
//!
//! The rooms are the top-level modules of the crate: the files directly under `src/` and
//! the folders. An import is any `crate::<room>` path outside a comment. These tests fail
//! when a room starts to depend on one above it, so the arrows keep pointing one way:
//! domain <- store <- (grpc, background) <- app <- cli, with the tools outside the server.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// The room a file belongs to: its folder under `src/`, or its own name.
fn room_of(file: &Path) -> String {
    let rel = file.strip_prefix(src()).expect("under src");
    let first = rel.components().next().expect("a component");
    let name = first.as_os_str().to_string_lossy();
    name.trim_end_matches(".rs").to_owned()
}

/// The source without plain `//` comments, so that a remark naming another room is not an
/// import. Doc comments stay: a `crate::` path in one is a link rustdoc follows, and a
/// room's documentation pointing upwards is an arrow the wrong way too. String literals
/// in this code base never hold `//` followed by a `crate::` path, so a line-based strip
/// is enough.
fn code_of(file: &Path) -> String {
    strip_comments(&std::fs::read_to_string(file).expect("read source"), false)
}

/// The source with its doc comments but without plain `//` comments: what the room
/// imports and links to.
fn code_and_docs_of(file: &Path) -> String {
    strip_comments(&std::fs::read_to_string(file).expect("read source"), true)
}

fn strip_comments(text: &str, keep_docs: bool) -> String {
    let is_doc = |c: &str| c.starts_with("///") || c.starts_with("//!");
    text.lines()
        .map(|line| match line.find("//") {
            Some(i) if !(line[..i].contains('"') || keep_docs && is_doc(&line[i..])) => &line[..i],
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The rooms named by `crate::` paths in `code`, `use crate::{a, b::c}` groups included.
fn rooms_named(code: &str) -> BTreeSet<String> {
    let mut rooms = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() && name != "self" {
                    rooms.insert(name);
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                rooms.insert(name);
            }
        }
    }
    rooms
}

/// room -> the other rooms it imports.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in rust_files(&src()) {
        let room = room_of(&file);
        if room == "main" || room == "lib" {
            continue;
        }
        let named = rooms_named(&code_and_docs_of(&file));
        let entry = graph.entry(room.clone()).or_default();
        entry.extend(named.into_iter().filter(|r| *r != room));
    }
    graph
}

/// What each room may import: the floors below it (`proto` is the generated API).
fn allowed(room: &str) -> Option<&'static [&'static str]> {
    Some(match room {
        "domain" => &[],
        "store" => &["domain", "telemetry"],
        "security" => &[],
        "config" => &["security"],
        "telemetry" => &["config", "security"],
        "background" => &["store", "domain", "telemetry"],
        "grpc" => &[
            "store",
            "domain",
            "security",
            "background",
            "telemetry",
            "proto",
        ],
        "app" => &[
            "config",
            "telemetry",
            "store",
            "domain",
            "security",
            "background",
            "grpc",
            "proto",
        ],
        "client" => &["proto"],
        "tools" => &[
            "client",
            "store",
            "grpc",
            "domain",
            "config",
            "telemetry",
            "proto",
        ],
        "cli" => &[
            "app",
            "client",
            "tools",
            "config",
            "telemetry",
            "security",
            "domain",
            "grpc",
            "proto",
            "store",
        ],
        _ => return None,
    })
}

#[test]
fn every_room_imports_only_the_floors_below_it() {
    let mut wrong = Vec::new();
    for (room, named) in imports() {
        let Some(allowed) = allowed(&room) else {
            wrong.push(format!(
                "{room}: a new room; give it a place in the layout (src/lib.rs and this test)"
            ));
            continue;
        };
        for other in named {
            if !allowed.contains(&other.as_str()) {
                wrong.push(format!("{room} imports crate::{other}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layout:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_top_level_rooms_import_each_other_without_a_cycle() {
    let graph = imports();
    // Depth-first search for a back edge; report the cycle it closes.
    fn visit(
        room: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|r| r == room) {
            let mut cycle = path[i..].to_vec();
            cycle.push(room.to_owned());
            return Some(cycle);
        }
        if done.contains(room) {
            return None;
        }
        path.push(room.to_owned());
        for next in graph.get(room).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(room.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    for room in graph.keys() {
        if let Some(cycle) = visit(room, &graph, &mut Vec::new(), &mut done) {
            panic!("import cycle: {}", cycle.join(" -> "));
        }
    }
}

#[test]
fn the_server_never_imports_the_tools_and_the_tools_never_import_the_command_line() {
    for (room, named) in imports() {
        if room != "cli" {
            assert!(!named.contains("tools"), "{room} imports crate::tools");
        }
        if room == "tools" {
            assert!(!named.contains("cli"), "the tools import crate::cli");
            assert!(!named.contains("app"), "the tools import crate::app");
        }
    }
}

/// Files under `dir` whose code (comments stripped) mentions one of `words`.
fn files_using(dir: &str, words: &[&str]) -> Vec<String> {
    rust_files(&src().join(dir))
        .into_iter()
        .filter_map(|file| {
            let code = code_of(&file);
            let used: Vec<&str> = words
                .iter()
                .copied()
                .filter(|w| {
                    code.contains(&format!("{w}::"))
                        || code.contains(&format!("use {w}"))
                        || code.contains(&format!("extern crate {w}"))
                })
                .collect();
            (!used.is_empty()).then(|| format!("{}: {}", file.display(), used.join(", ")))
        })
        .collect()
}

#[test]
fn the_domain_uses_neither_sqlx_nor_tonic_and_the_store_never_uses_tonic() {
    let domain = files_using("domain", &["sqlx", "tonic", "tonic_types", "prost"]);
    assert!(
        domain.is_empty(),
        "the domain does I/O or transport:\n{}",
        domain.join("\n")
    );
    let store = files_using("store", &["tonic", "tonic_types"]);
    assert!(
        store.is_empty(),
        "the store knows the transport:\n{}",
        store.join("\n")
    );
}

#[test]
fn at_most_six_files_live_directly_under_src() {
    let files: Vec<String> = std::fs::read_dir(src())
        .expect("read src")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "rs"))
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(files.len() <= 6, "files directly under src/: {files:?}");
}

#[test]
fn the_backends_share_code_through_types_not_textual_inclusion() {
    let pasted: Vec<String> = rust_files(&src().join("store"))
        .into_iter()
        .filter(|f| code_of(f).contains("include!("))
        .map(|f| f.display().to_string())
        .collect();
    assert!(pasted.is_empty(), "include! under src/store: {pasted:?}");
}

#[test]
fn the_import_reader_sees_groups_paths_and_ignores_comments() {
    let code = strip_comments(
        "use crate::{domain::X, store};\n// crate::cli\nlet a = crate::grpc::f();",
        false,
    );
    let named = rooms_named(&code);
    let expected: BTreeSet<String> = ["domain", "store", "grpc"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(named, expected);
    // A doc comment's path is a link: it counts as an arrow.
    let docs = strip_comments("//! see `crate::app::App`\n// crate::cli\n", true);
    assert_eq!(rooms_named(&docs), BTreeSet::from(["app".to_string()]));
}
