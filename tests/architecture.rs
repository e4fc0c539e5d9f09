//! The house stands in floors, and no floor leans on one above it:
//!
//! ```text
//! config, metrics        the foundation: import nothing of the gateway's
//! store                  PostgreSQL, the user-state cache
//! credentials            passwords, tokens, limits, signing keys
//! mail                   the outbox and its delivery
//! own                    the gateway's own API
//! edge                   the request path: routes, identity headers, the proxy
//! ops                    start-up, the server, the CLI: assembles the rest
//! ```
//!
//! A module may use its own wing and the floors below it, never one above: a change to a floor
//! is then a change to what stands on it only, and the import graph has no circle between
//! wings. Test modules are held to it too (they are code of their wing).

use std::path::Path;

const FLOORS: [(&str, u8); 8] = [
    ("config", 0),
    ("metrics", 0),
    ("store", 1),
    ("credentials", 2),
    ("mail", 3),
    ("own", 4),
    ("edge", 5),
    ("ops", 6),
];

fn floor(wing: &str) -> Option<u8> {
    FLOORS.iter().find(|(w, _)| *w == wing).map(|(_, f)| *f)
}

/// The wings a file uses: every `crate::<wing>` outside comments.
fn used_wings(text: &str) -> Vec<String> {
    let mut used = Vec::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            let wing: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            used.push(wing);
            rest = after;
        }
    }
    used
}

fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn no_wing_uses_a_floor_above_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    files(&src, &mut all);
    let mut leaning = Vec::new();
    for path in all {
        let relative = path.strip_prefix(&src).unwrap();
        let first = relative
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let wing = first.trim_end_matches(".rs").to_string();
        // The crate root and the binaries stand outside the house.
        let Some(own_floor) = floor(&wing) else {
            continue;
        };
        let text = std::fs::read_to_string(&path).unwrap();
        for used in used_wings(&text) {
            if let Some(f) = floor(&used) {
                if f > own_floor || (f == own_floor && used != wing) {
                    leaning.push(format!("{} uses crate::{used}", relative.display()));
                }
            }
        }
    }
    leaning.sort();
    leaning.dedup();
    assert!(
        leaning.is_empty(),
        "upward imports:\n{}",
        leaning.join("\n")
    );
}

#[test]
fn the_check_sees_an_upward_import() {
    assert_eq!(
        used_wings("use crate::own::api::ApiError; // crate::ops in a comment"),
        ["own"]
    );
}
