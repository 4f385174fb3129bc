#!/usr/bin/env python3
"""Checks of the deployment files, run by scripts/validate-deploy.sh in its tools venv.

    validate_deploy.py k8s [--k8s-versions 1.28,1.37] [--render OVERLAY=FILE]...
        k8s/ (validate_k8s.py): the tree (every kustomization's references exist and every
        file of its directory is referenced; every object against its schema: Kubernetes
        kinds with kubernetes-validate, strict, for each version given; the custom resources
        with the hand-written schemas of k8s/schemas/); and each overlay as rendered by
        `kubectl kustomize k8s/overlays/OVERLAY` into FILE: the schemas, then the objects
        against each other and against the code (references, probes, grace periods, images,
        the migrate Job, KEDA, monitoring, NetworkPolicies, the routing of the base URL).
    validate_deploy.py compose FILE --dockerfile Dockerfile
        Structure of the compose file that a compose client cannot see: healthchecks (the
        images' own `<bin> healthcheck`, never curl), depends_on conditions, Dockerfile
        targets, bind mounts, settings (no stale MIGRATE_ON_START, METRICS_ADDR unpublished). And the
        Dockerfile: every base image pinned by digest, the images non-root, no curl or wget in
        them, their HEALTHCHECK the subcommand, the version label the workspace's version.

Prints one line per problem and exits 1 when there is any.
"""

import argparse
import os
import re
import sys

from deploy_lib import PROBLEMS, REPO, finish, load_docs, problem

K8S = os.path.join(REPO, "k8s")


def cmd_k8s(args):
    import validate_k8s  # noqa: PLC0415 (jsonschema and kubernetes-validate: k8s only)

    versions = [v.strip() for v in args.k8s_versions.split(",") if v.strip()]
    overlays, kustomizations, files = validate_k8s.check_tree(K8S, versions)
    if finish("k8s/"):
        return 1
    print(f"ok: k8s/: {kustomizations} kustomizations reference every file and exist; {files} manifests "
          f"valid against Kubernetes {', '.join(versions)} (strict) and k8s/schemas/", flush=True)
    rendered = dict(r.split("=", 1) for r in args.render)
    for overlay in overlays:
        name = os.path.basename(overlay)
        if name not in rendered:
            continue
        objs = load_docs(rendered[name])
        label = f"kubectl kustomize k8s/overlays/{name}"
        validate_k8s.validate_objects(objs, versions, label)
        if not PROBLEMS:
            validate_k8s.cross_checks(name, objs)
        if finish(label):
            return 1
        kinds = sorted({o["kind"] for o in objs})
        print(f"ok: {label}: {len(objs)} objects ({', '.join(kinds)}) valid and consistent", flush=True)
    for name in sorted(set(rendered) - {os.path.basename(o) for o in overlays}):
        problem("validate_deploy.py", f"--render {name}: no such overlay in k8s/overlays/")
    return finish("k8s/")


# ---- compose ------------------------------------------------------------------------------


def duration_seconds(text):
    total = 0.0
    for number, unit in re.findall(r"([0-9.]+)(h|ms|m|s|us|ns)", str(text)):
        total += float(number) * {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}[unit]
    return total


def default_of(value):
    """'${NAME:-default}' -> 'default'; anything else as it is."""
    m = re.fullmatch(r"\$\{[A-Z0-9_]+:?-([^}]*)\}", str(value))
    return m.group(1) if m else str(value)


# ---- Dockerfile -----------------------------------------------------------------------------

PINNED = re.compile(r"^[^@\s]+@sha256:[0-9a-f]{64}$")
CARGO_TOML = os.path.join(REPO, "Cargo.toml")


def dockerfile_instructions(path):
    """(global ARG defaults, stages) of a Dockerfile: each stage a dict with its base image
    (ARGs expanded), name and [(INSTRUCTION, arguments)], continuation lines joined."""
    lines, current = [], ""
    with open(path, encoding="utf-8") as f:
        for raw in f:
            line = raw.rstrip("\n")
            if line.lstrip().startswith("#"):
                continue
            if line.endswith("\\"):
                current += line[:-1] + " "
                continue
            current += line
            if current.strip():
                lines.append(current.strip())
            current = ""
    args, stages = {}, []
    for line in lines:
        instruction, _, rest = line.partition(" ")
        instruction, rest = instruction.upper(), rest.strip()
        if instruction == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name.strip()] = default.strip().strip('"')
        elif instruction == "FROM":
            words = [w for w in rest.split() if not w.startswith("--")]
            image = re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: args.get(m.group(1), m.group(0)), words[0])
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append({"base": image, "name": name, "body": []})
        elif stages:
            stages[-1]["body"].append((instruction, rest))
    return args, stages


def workspace_version():
    with open(CARGO_TOML, encoding="utf-8") as f:
        text = f.read()
    section = re.search(r"^\[workspace\.package\]\n(.*?)(?=^\[)", text, re.MULTILINE | re.DOTALL)
    m = re.search(r'^version\s*=\s*"([^"]+)"', section.group(1) if section else "", re.MULTILINE)
    return m.group(1) if m else None


def check_dockerfile(path, targets):
    """The images compose builds (`targets`) from the Dockerfile at `path`."""
    where = path
    args, stages = dockerfile_instructions(path)
    by_name = {s["name"]: s for s in stages if s["name"]}
    for stage in stages:
        if stage["base"] not in by_name and not PINNED.match(stage["base"]):
            problem(where, f"FROM {stage['base']} (stage {stage['name']}) is not pinned by digest (image@sha256:...)")

    def chain(name):
        """The stages an image is made of, itself first, down to its external base."""
        out, stage = [], by_name.get(name)
        while stage is not None and stage not in out:
            out.append(stage)
            stage = by_name.get(stage["base"])
        return out

    version = workspace_version()
    if args.get("VERSION") != version:
        problem(where, f"ARG VERSION={args.get('VERSION')} is not the workspace's version {version} (Cargo.toml)")
    for target in sorted(targets):
        stages_of = chain(target)
        if not stages_of:
            continue  # the compose check names a missing target
        body = [i for s in stages_of for i in s["body"]]
        users = [rest for ins, rest in reversed(body) if ins == "USER"]
        user = users[0].split(":")[0] if users else "root"
        if user in ("root", "0"):
            problem(where, f"image {target} runs as root (USER)")
        for ins, rest in body:
            tool = re.search(r"\b(curl|wget)\b", rest) if ins == "RUN" else None
            if tool:
                problem(where, f"image {target}: a RUN installs or uses {tool.group(1)} (the images carry no HTTP client; healthchecks are `<bin> healthcheck`)")
        labels = " ".join(rest for ins, rest in body if ins == "LABEL")
        if "org.opencontainers.image.version=" not in labels:
            problem(where, f"image {target} has no org.opencontainers.image.version label")
        checks = [rest for ins, rest in body if ins == "HEALTHCHECK"]
        want = f'CMD ["/usr/local/bin/{target}", "healthcheck"]'
        if not checks or not checks[-1].endswith(want):
            problem(where, f"image {target}: HEALTHCHECK must run {want}")
    return len(stages)


def cmd_compose(args):
    where = args.file
    docs = load_docs(args.file)
    if not docs:
        return finish("compose file")
    doc = docs[0]
    stages = set()
    with open(args.dockerfile, encoding="utf-8") as f:
        for line in f:
            m = re.match(r"\s*FROM\s+\S+\s+AS\s+(\S+)", line, re.IGNORECASE)
            if m:
                stages.add(m.group(1))
    services = doc.get("services") or {}
    want = ["postgres", "rabbitmq", "migrate", "workflow-service", "runtime-service",
            "executor-worker", "support-agent", "gateway"]
    for name in want:
        if name not in services:
            problem(where, f"no service {name}")
    thygon = ["migrate", "workflow-service", "runtime-service", "executor-worker"]
    targets = set()
    for name, svc in services.items():
        svc = svc or {}
        one_shot = str(svc.get("restart", "no")) == "no"
        test = (svc.get("healthcheck") or {}).get("test")
        if not one_shot and not test:
            problem(where, f"service {name} runs on but has no healthcheck")
        build = svc.get("build")
        if isinstance(build, dict) and build.get("target") and build["target"] not in stages:
            problem(where, f"service {name} builds target {build['target']}, no stage of {args.dockerfile}")
        # The images have no curl: their healthcheck is the binary's own subcommand.
        if isinstance(build, dict) and build.get("target"):
            targets.add(build["target"])
            want = ["CMD", f"/usr/local/bin/{build['target']}", "healthcheck"]
            if not one_shot and test != want:
                problem(where, f"service {name}: healthcheck test must be {json.dumps(want)}, not {json.dumps(test)}")
        deps = svc.get("depends_on") or {}
        if isinstance(deps, list):
            deps = {d: {"condition": "service_started"} for d in deps}
        for dep, spec in deps.items():
            cond = (spec or {}).get("condition", "service_started")
            target = services.get(dep)
            if target is None:
                problem(where, f"service {name} depends on {dep}, which does not exist")
            elif cond == "service_healthy" and not (target.get("healthcheck") or {}).get("test"):
                problem(where, f"service {name} waits for {dep} to be healthy; it has no healthcheck")
            elif cond == "service_completed_successfully" and str(target.get("restart", "no")) != "no":
                problem(where, f"service {name} waits for {dep} to complete; it restarts")
        for vol in svc.get("volumes") or []:
            src = vol.split(":", 1)[0] if isinstance(vol, str) else (vol or {}).get("source", "")
            if src.startswith((".", "/")) and not os.path.exists(os.path.join(os.path.dirname(args.file), src)):
                problem(where, f"service {name} mounts {src}, which does not exist")
    for name in thygon:
        env = (services.get(name) or {}).get("environment") or {}
        if isinstance(env, list):
            env = dict(e.split("=", 1) if "=" in e else (e, "") for e in env)
        for var in ("DATABASE_URL", "AMQP_URL", "ADMIN_API_KEY", "RATE_LIMIT_PER_SECOND",
                    "MAX_RUNNING_PER_ORG", "LOG_FORMAT"):
            if var not in env:
                problem(where, f"service {name} does not set {var}")
    for name in thygon:
        deps = (services.get(name) or {}).get("depends_on") or {}
        if name != "migrate" and (deps.get("migrate") or {}).get("condition") != "service_completed_successfully":
            problem(where, f"service {name} must wait for migrate (service_completed_successfully)")
    migrate = services.get("migrate") or {}
    if migrate.get("command") != ["migrate"]:
        problem(where, "service migrate must run `workflow-service migrate` (command: [\"migrate\"])")
    if "MIGRATION_DATABASE_URL" not in (migrate.get("environment") or {}):
        problem(where, "service migrate must set MIGRATION_DATABASE_URL (the role that changes the schema)")
    for name in thygon[1:]:
        svc = services.get(name) or {}
        env = svc.get("environment") or {}
        if "MIGRATE_ON_START" in env:
            problem(where, f"service {name} sets MIGRATE_ON_START, which no process reads any more (migrate applies the schema)")
        metrics = str(env.get("METRICS_ADDR", ""))
        if not metrics:
            problem(where, f"service {name} must serve /metrics on a port of its own (METRICS_ADDR)")
        port = metrics.rsplit(":", 1)[-1]
        for published in svc.get("ports") or []:
            if re.search(rf"(^|:){re.escape(port)}(/tcp)?$", str(published)):
                problem(where, f"service {name} publishes its metrics port {port}; keep it inside the network")
    worker = services.get("executor-worker") or {}
    if int(((worker.get("deploy") or {}).get("replicas")) or 1) < 2:
        problem(where, "executor-worker should run several replicas (deploy.replicas)")
    grace = float(default_of((worker.get("environment") or {}).get("SHUTDOWN_GRACE_SECONDS", 30)))
    if not duration_seconds(worker.get("stop_grace_period", "10s")) > grace:
        problem(where, f"executor-worker stop_grace_period must exceed SHUTDOWN_GRACE_SECONDS ({grace:g}s)")
    for name in thygon:
        env = (services.get(name) or {}).get("environment") or {}
        if ":?" not in str(env.get("ADMIN_API_KEY", "")):
            problem(where, f"service {name}: ADMIN_API_KEY must be required (${{ADMIN_API_KEY:?...}}), never defaulted")
    # Every published port binds to 127.0.0.1 unless the operator says otherwise.
    for name, svc in services.items():
        for port in (svc or {}).get("ports") or []:
            spec = str(port)
            if not (spec.startswith("127.0.0.1:") or spec.startswith("${GATEWAY_BIND:-127.0.0.1}:")):
                problem(where, f"service {name} publishes {spec} on every interface (bind it to 127.0.0.1)")
    rabbit = services.get("rabbitmq") or {}
    if "management" not in str(rabbit.get("image", "")):
        problem(where, "rabbitmq needs an image with the management plugin (rabbitmq:*-management)")
    if not any("15672" in str(p) for p in rabbit.get("ports") or []):
        problem(where, "rabbitmq does not publish the management port 15672")
    n_stages = check_dockerfile(args.dockerfile, targets)
    rc = finish("compose file")
    if rc == 0:
        print(f"ok: {where}: {len(services)} services, healthchecks, start order, "
              f"Dockerfile targets and mounts consistent")
        print(f"ok: {args.dockerfile}: {n_stages} stages, base images pinned by digest; "
              f"{', '.join(sorted(targets))}: non-root, no curl, healthcheck subcommand, version label")
    return rc


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    k = sub.add_parser("k8s")
    k.add_argument("--k8s-versions", default="1.28,1.37")
    k.add_argument("--render", action="append", default=[], metavar="OVERLAY=FILE",
                   help="an overlay's `kubectl kustomize` output, to check as a whole")
    c = sub.add_parser("compose")
    c.add_argument("file")
    c.add_argument("--dockerfile", required=True)
    args = parser.parse_args()
    return {"k8s": cmd_k8s, "compose": cmd_compose}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
