"""What the deployment checks share: the problem list and YAML loading
(scripts/validate_deploy.py, validate_k8s.py and the k8s_*.py)."""

import os
import sys

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROBLEMS = []


def problem(where, message):
    PROBLEMS.append(f"{where}: {message}")


def finish(what):
    for p in PROBLEMS:
        print(f"ERROR {p}", file=sys.stderr)
    if PROBLEMS:
        print(f"{what}: {len(PROBLEMS)} problem(s)", file=sys.stderr)
        return 1
    return 0


def load_docs(path):
    try:
        text = sys.stdin.read() if path == "-" else open(path, encoding="utf-8").read()
        return [d for d in yaml.safe_load_all(text) if d is not None]
    except (OSError, yaml.YAMLError) as e:
        problem(path, f"cannot read YAML: {e}")
        return []


def name_of(obj):
    return f"{obj.get('kind', '?')}/{(obj.get('metadata') or {}).get('name', '?')}"


def rel(path):
    return os.path.relpath(path, REPO)
