//! The documentation stands alone: every relative link of the project's Markdown files
//! resolves to a file of the repository (and its `#anchor` to a heading of that file), and no
//! tracked file refers to a file outside the repository, which whoever clones it does not have.
//! The README stays a front page (at most 200 lines) that links every document of `docs/`,
//! and measured figures stay in docs/PERFORMANCE.md.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use thygon_e2e::workspace_root;

/// The repository's tracked files (`git ls-files`), relative to its root.
fn tracked_files() -> Vec<PathBuf> {
    let out = Command::new("git")
        .arg("-C")
        .arg(workspace_root())
        .args(["ls-files", "-z"])
        .output()
        .expect("git ls-files");
    assert!(out.status.success(), "git ls-files failed");
    out.stdout
        .split(|b| *b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| PathBuf::from(String::from_utf8_lossy(p).into_owned()))
        .collect()
}

/// The anchor GitHub gives a heading: lower case, punctuation dropped (but `-` and `_`),
/// spaces as `-`.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of a Markdown file's headings (outside code blocks), with GitHub's `-1`,
/// `-2`, ... for repeated ones.
fn anchors(text: &str) -> HashSet<String> {
    let mut seen = HashSet::new();
    let mut in_code = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code || !line.starts_with('#') {
            continue;
        }
        let base = slug(line.trim_start_matches('#'));
        let mut anchor = base.clone();
        let mut n = 0;
        while seen.contains(&anchor) {
            n += 1;
            anchor = format!("{base}-{n}");
        }
        seen.insert(anchor);
    }
    seen
}

/// The targets of the inline links `[text](target)` of a Markdown file, outside code blocks
/// and code spans, with their line numbers.
fn links(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    let mut in_code = false;
    for (n, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        // Drop code spans: what is between backticks is not a link.
        let plain: String = line
            .split('`')
            .enumerate()
            .filter(|(i, _)| i % 2 == 0)
            .map(|(_, s)| s)
            .collect::<Vec<_>>()
            .join(" ");
        let mut rest = plain.as_str();
        while let Some(at) = rest.find("](") {
            rest = &rest[at + 2..];
            let end = rest.find(')').unwrap_or(rest.len());
            let target = rest[..end].split_whitespace().next().unwrap_or("");
            found.push((n + 1, target.to_string()));
            rest = &rest[end..];
        }
    }
    found
}

#[test]
fn every_relative_link_of_the_docs_resolves_inside_the_repository() {
    let root = workspace_root();
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in tracked_files()
        .into_iter()
        .filter(|f| f.extension().is_some_and(|e| e == "md"))
    {
        let text = std::fs::read_to_string(root.join(&file)).expect("read a Markdown file");
        for (line, target) in links(&text) {
            if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (path, anchor) = match target.split_once('#') {
                Some((p, a)) => (p, Some(a)),
                None => (target.as_str(), None),
            };
            let dest: PathBuf = if path.is_empty() {
                root.join(&file)
            } else {
                root.join(file.parent().unwrap_or(Path::new(""))).join(path)
            };
            let Ok(dest) = dest.canonicalize() else {
                broken.push(format!("{}:{line}: {target}: no such file", file.display()));
                continue;
            };
            if !dest.starts_with(root.canonicalize().unwrap()) {
                broken.push(format!(
                    "{}:{line}: {target}: outside the repository",
                    file.display()
                ));
                continue;
            }
            if let Some(anchor) = anchor {
                let is_markdown = dest.extension().is_some_and(|e| e == "md");
                let heads = anchors(&std::fs::read_to_string(&dest).unwrap_or_default());
                if is_markdown && !heads.contains(anchor) {
                    broken.push(format!(
                        "{}:{line}: {target}: no heading with the anchor #{anchor}",
                        file.display()
                    ));
                }
            }
        }
    }
    println!("{checked} relative links checked");
    assert!(
        checked > 20,
        "the docs link to each other: only {checked} links found"
    );
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn no_file_refers_to_a_file_outside_the_repository() {
    let root = workspace_root();
    // Built from pieces, so this file does not name them itself.
    let outside = [format!("../{}", "shared/"), format!("{}.md", "CONTRACT")];
    let mut found = Vec::new();
    for file in tracked_files() {
        let Ok(text) = std::fs::read_to_string(root.join(&file)) else {
            continue; // not text
        };
        for (n, line) in text.lines().enumerate() {
            if outside.iter().any(|o| line.contains(o.as_str())) {
                found.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "references to files outside the repository:\n{}",
        found.join("\n")
    );
}

/// The README is the front page: what Thygon is, the two commands, a first workflow and run,
/// and where to go next. Everything else lives in `docs/`.
const README_MAX_LINES: usize = 200;

/// The documents of `docs/`, each of which the README links to.
const DOCS: [&str; 10] = [
    "docs/API.md",
    "docs/WORKFLOWS.md",
    "docs/AGENTS.md",
    "docs/OPERATIONS.md",
    "docs/DEPLOY.md",
    "docs/ARCHITECTURE.md",
    "docs/TESTING.md",
    "docs/SECURITY.md",
    "docs/RELIABILITY.md",
    "docs/PERFORMANCE.md",
];

fn readme() -> String {
    std::fs::read_to_string(workspace_root().join("README.md")).expect("read README.md")
}

#[test]
fn the_readme_is_short() {
    let lines = readme().lines().count();
    assert!(
        lines <= README_MAX_LINES,
        "README.md has {lines} lines, more than {README_MAX_LINES}: move reference material to docs/"
    );
}

#[test]
fn every_document_exists_and_the_readme_links_to_it() {
    let root = workspace_root();
    let linked: HashSet<String> = links(&readme())
        .into_iter()
        .map(|(_, target)| target.split('#').next().unwrap_or("").to_string())
        .collect();
    let mut problems = Vec::new();
    for doc in DOCS {
        if !root.join(doc).is_file() {
            problems.push(format!("{doc} does not exist"));
        }
        if !linked.contains(doc) {
            problems.push(format!("README.md does not link to {doc}"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Measured figures (rates, latencies, speed-ups) live in docs/PERFORMANCE.md only, where they
/// are dated and explained; elsewhere they go stale unseen. Limits and defaults are settings,
/// not figures, and may appear anywhere.
#[test]
fn measured_figures_are_only_in_performance_md() {
    let root = workspace_root();
    let figures = [
        "runs/s",
        "triggers/s",
        "ops/s",
        "transactions/s",
        "x faster",
        "times faster",
    ];
    let mut found = Vec::new();
    for file in tracked_files()
        .into_iter()
        .filter(|f| f.extension().is_some_and(|e| e == "md"))
        .filter(|f| f != Path::new("docs/PERFORMANCE.md"))
    {
        let text = std::fs::read_to_string(root.join(&file)).expect("read a Markdown file");
        for (n, line) in text.lines().enumerate() {
            let lower = line.to_lowercase();
            if let Some(f) = figures.iter().find(|f| lower.contains(*f)) {
                found.push(format!(
                    "{}:{}: {f}: {}",
                    file.display(),
                    n + 1,
                    line.trim()
                ));
            }
        }
    }
    assert!(
        found.is_empty(),
        "measured figures outside docs/PERFORMANCE.md (move them there):\n{}",
        found.join("\n")
    );
}

#[test]
fn the_slugs_are_githubs() {
    assert_eq!(slug("What to alert on"), "what-to-alert-on");
    assert_eq!(slug("The broker: `amqps://`"), "the-broker-amqps");
    assert_eq!(
        slug("PgBouncer (transaction mode)"),
        "pgbouncer-transaction-mode"
    );
    let a = anchors("# A\n```\n# not a heading\n```\n## A\n");
    assert_eq!(a, HashSet::from(["a".to_string(), "a-1".to_string()]));
    assert_eq!(
        links("see [x](docs/A.md#b) and `[y](no)` [z](../c.md \"t\")"),
        vec![(1, "docs/A.md#b".to_string()), (1, "../c.md".to_string())]
    );
}

/// The paths a Markdown file names in code spans (`shared-models/src/runs/mod.rs`,
/// `scripts/run.sh`, `k8s/base/`): those that start at a top-level folder of the repository.
fn named_paths(text: &str, top: &HashSet<String>) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (n, line) in text.lines().enumerate() {
        for (i, span) in line.split('`').enumerate() {
            // Odd pieces are inside backticks.
            if i % 2 == 0 || span.contains(char::is_whitespace) {
                continue;
            }
            let path = span.split([':', '#']).next().unwrap_or("");
            let first = path.split('/').next().unwrap_or("");
            if path.contains('/') && top.contains(first) && !path.contains(['*', '<', '{', '$']) {
                found.push((n + 1, path.to_string()));
            }
        }
    }
    found
}

#[test]
fn every_path_the_docs_name_exists() {
    let root = workspace_root();
    let files = tracked_files();
    let top: HashSet<String> = files
        .iter()
        .filter(|f| f.components().count() > 1)
        .filter_map(|f| f.components().next())
        .map(|c| c.as_os_str().to_string_lossy().to_string())
        .collect();
    let mut missing = Vec::new();
    for file in files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "md"))
    {
        let text = std::fs::read_to_string(root.join(file)).expect("read");
        for (line, path) in named_paths(&text, &top) {
            if !root.join(&path).exists() {
                missing.push(format!("{}:{line}: {path}", file.display()));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "paths named in the docs that do not exist:\n{}",
        missing.join("\n")
    );
}
