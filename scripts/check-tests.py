#!/usr/bin/env python3
"""`make test`'s check that no test copies SQL production owns (scripts/test.sh runs it).

A test that needs a production write calls the production function; a test that pastes the
statement instead keeps passing after production's statement changed, so it proves nothing.
This finds such pastes: it collects every SQL text of production (the `.sql` files under the
crates' `src/` and `migrations/`, and each Rust string literal of non-test code that reads
as SQL), and fails when a test file (a crate's `tests/`, `testkit/`, `e2e/`) holds a run of
SHINGLE or more consecutive SQL tokens of one of them.

    python3 scripts/check-tests.py          # exit 1 and a list when a test copies SQL
    python3 scripts/check-tests.py --self-test
"""
import pathlib
import re
import sys

REPO = pathlib.Path(__file__).resolve().parent.parent
CRATES = ["shared-models", "workflow-service", "runtime-service", "executor-worker"]
TEST_ROOTS = [f"{c}/tests" for c in CRATES] + ["testkit", "e2e"]
# Long enough that a shared run is a copy of a statement, not a common phrase such as
# `SELECT id FROM runs WHERE org_id = $1`.
SHINGLE = 12

SQL_START = re.compile(r"^\s*(select|insert|update|delete|with|create|alter)\b", re.I)
# "...", with escapes; r"..." and r#"..."# raw strings.
LITERAL = re.compile(r'r(#*)"(.*?)"\1|"((?:[^"\\]|\\.)*)"', re.S)
TOKEN = re.compile(r"[a-z_][a-z0-9_]*|\$\d+|\d+|'[^']*'|[^\s\w]")


def tokens(sql):
    return TOKEN.findall(sql.lower())


def shingles(toks):
    return {tuple(toks[i : i + SHINGLE]) for i in range(len(toks) - SHINGLE + 1)}


def literals(rust):
    for m in LITERAL.finditer(rust):
        text = m.group(2) if m.group(2) is not None else m.group(3)
        # A string continued over lines with a trailing backslash.
        yield re.sub(r"\\\n\s*", " ", text)


def strip_test_modules(rust):
    """Production source without its `#[cfg(test)]` modules (tests may say what they like)."""
    m = re.search(r"#\[cfg\(test\)\]\s*mod\s+\w+\s*\{", rust)
    return rust[: m.start()] if m else rust


def production_sql():
    found = {}
    for crate in CRATES:
        for path in sorted((REPO / crate).rglob("*.sql")):
            if "/target/" not in str(path):
                found[str(path.relative_to(REPO))] = path.read_text()
        for path in sorted((REPO / crate / "src").rglob("*.rs")):
            rust = strip_test_modules(path.read_text())
            sql = [s for s in literals(rust) if SQL_START.match(s)]
            if sql:
                found[str(path.relative_to(REPO))] = "\n;\n".join(sql)
    return found


def test_files():
    for root in TEST_ROOTS:
        yield from sorted((REPO / root).rglob("*.rs"))


def copies(production, files):
    owners = {}
    for origin, sql in production.items():
        for statement in sql.split(";"):
            for shingle in shingles(tokens(statement)):
                owners.setdefault(shingle, origin)
    problems = []
    for path in files:
        text = path.read_text() if hasattr(path, "read_text") else path[1]
        name = str(path.relative_to(REPO)) if hasattr(path, "relative_to") else path[0]
        for literal in literals(text):
            hit = next((owners[s] for s in shingles(tokens(literal)) if s in owners), None)
            if hit:
                excerpt = " ".join(literal.split())[:100]
                problems.append(f"{name}: copies SQL of {hit}: \"{excerpt}...\"")
    return problems


def self_test():
    production = {"prod.sql": "UPDATE runs SET status = 'RUNNING', lease_owner = $2, "
                  "lease_expires_at = now() + $3 WHERE id = $1 AND status = 'PENDING'"}
    pasted = ("t.rs", 'sql_query("update runs set status = \'RUNNING\', lease_owner = $2,\n'
              '  lease_expires_at = now() + $3 where id = $1")')
    own = ("u.rs", 'sql_query("UPDATE runs SET lease_expires_at = now() WHERE id = $1")')
    assert copies(production, [pasted]), "a pasted statement is found"
    assert not copies(production, [own]), "a short statement of the test's own is not"
    print("check-tests: self-test passed")


def main():
    if sys.argv[1:] == ["--self-test"]:
        return self_test()
    production = production_sql()
    if not production:
        sys.exit("check-tests: found no production SQL at all; is this the repository?")
    files = list(test_files())
    problems = copies(production, files)
    if problems:
        print("\n".join(problems), file=sys.stderr)
        sys.exit("check-tests: tests copy SQL that production owns (above): call the "
                 "production function instead")
    print(f"check-tests: {len(files)} test files hold no copy of the SQL of "
          f"{len(production)} production files")


if __name__ == "__main__":
    main()
