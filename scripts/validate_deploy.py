#!/usr/bin/env python3
"""Checks of the deployment files, run by scripts/validate-deploy.sh in its tools venv.

    validate_deploy.py k8s [--k8s-versions 1.28,1.37] [--label NAME] FILE...
        Every object in FILE... (multi-document YAML; "-" reads stdin):
        - Kubernetes kinds: kubernetes-validate's strict JSON schemas (unknown fields are
          errors) for each version given; a kind with no schema is an error, not a warning;
        - keda.sh kinds: the hand-written schemas in k8s/schemas/ (jsonschema);
        and, across the objects: references (Services, Secrets, ConfigMaps, scale targets,
        PDB selectors), probes and resources of every container, the worker's grace period,
        the KEDA queue name against shared-models/src/queue.rs, and the Ingress routing of
        a table of URLs (ingress-nginx use-regex semantics) against the gateway's routing.
    validate_deploy.py kustomization DIR
        DIR/kustomization.yaml lists every *.yaml of DIR, and only existing files.
    validate_deploy.py compose FILE --dockerfile Dockerfile
        Structure of the compose file that a compose client cannot see: healthchecks (the
        images' own `<bin> healthcheck`, never curl), depends_on conditions, Dockerfile
        targets, bind mounts, settings (MIGRATE_ON_START, METRICS_ADDR unpublished). And the
        Dockerfile: every base image pinned by digest, the images non-root, no curl or wget in
        them, their HEALTHCHECK the subcommand, the version label the workspace's version.

Prints one line per problem and exits 1 when there is any.
"""

import argparse
import json
import os
import re
import sys

import jsonschema
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCHEMA_DIR = os.path.join(REPO, "k8s", "schemas")
QUEUE_RS = os.path.join(REPO, "shared-models", "src", "queue.rs")
NAMESPACE = "thygon"

# The ServiceName each URL must reach through the Ingress: the routing of
# deploy/nginx/thygon.conf.template (CONTRACT.md "One base URL"). Keep them in step.
RUNTIME, WORKFLOW = "runtime-service", "workflow-service"
ROUTES = [
    ("/workflows/runs", RUNTIME),
    ("/workflows/runs/", RUNTIME),
    ("/workflows/runs/run_01H/events", RUNTIME),
    ("/workflows/runs/run_01H/cancel", RUNTIME),
    ("/workflows/wf_support/trigger", RUNTIME),
    ("/workflows/wf_support/trigger/", RUNTIME),
    ("/ops/queues", RUNTIME),
    ("/ops/workers", RUNTIME),
    ("/ops", RUNTIME),
    ("/ui/", RUNTIME),
    ("/ui/index.html", RUNTIME),
    ("/workflows", WORKFLOW),
    ("/workflows/", WORKFLOW),
    ("/workflows/wf_support", WORKFLOW),
    ("/workflows/runsX", WORKFLOW),
    ("/workflows/wf_support/versions/2", WORKFLOW),
    ("/workflows/validate", WORKFLOW),
    ("/admin/orgs", WORKFLOW),
    ("/admin/keys/key_1", WORKFLOW),
    ("/openapi.json", WORKFLOW),
    ("/docs/", WORKFLOW),
    ("/healthz", WORKFLOW),
    ("/readyz", WORKFLOW),
    ("/opsx", WORKFLOW),
    ("/no-such-route", WORKFLOW),
]

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


# ---- kubernetes ---------------------------------------------------------------------------


def schema_errors(obj, versions):
    """Schema validation of one object; returns a list of messages."""
    api = str(obj.get("apiVersion", ""))
    kind = str(obj.get("kind", ""))
    if not api or not kind:
        return ["no apiVersion or kind"]
    if api.startswith("keda.sh/"):
        path = os.path.join(SCHEMA_DIR, f"keda.sh_{api.split('/', 1)[1]}_{kind.lower()}.json")
        if not os.path.exists(path):
            return [f"no schema for {api} {kind} (expected {os.path.relpath(path, REPO)})"]
        with open(path, encoding="utf-8") as f:
            schema = json.load(f)
        validator = jsonschema.Draft202012Validator(schema)
        out = []
        for e in sorted(validator.iter_errors(obj), key=lambda e: list(e.path)):
            where = ".".join(str(p) for p in e.absolute_path) or "(top)"
            out.append(f"{where}: {e.message} [k8s/schemas/{os.path.basename(path)}]")
        return out

    import kubernetes_validate  # noqa: PLC0415 (only this subcommand needs it)

    out = []
    for version in versions:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            where = ".".join(str(p) for p in e.path) or "(top)"
            out.append(f"{where}: {e.message} [Kubernetes {e.version}, strict]")
        except kubernetes_validate.SchemaNotFoundError:
            out.append(f"no Kubernetes {version} schema for {api} {kind} (a typo, or a CRD "
                       "without a schema in k8s/schemas/)")
    return out


def matches(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def pod_labels(dep):
    return ((dep.get("spec") or {}).get("template") or {}).get("metadata", {}).get("labels") or {}


def containers(dep):
    return (((dep.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers") or []


def env_value(configmap, name, default):
    data = (configmap or {}).get("data") or {}
    return data.get(name, default)


def ingress_target(ingress, url):
    """The Service that ingress-nginx sends url to, with use-regex: every path is a
    case-insensitive regular expression anchored at the start, tried longest first."""
    paths = []
    for rule in (ingress.get("spec") or {}).get("rules") or []:
        for p in ((rule.get("http") or {}).get("paths")) or []:
            paths.append(p)
    paths.sort(key=lambda p: -len(p.get("path", "")))
    for p in paths:
        try:
            if re.match("^" + p.get("path", ""), url, re.IGNORECASE):
                return p["backend"]["service"]["name"]
        except re.error as e:
            return f"(invalid regex {p.get('path')!r}: {e})"
    return None


def cross_checks(objs, where):
    by_kind = {}
    for o in objs:
        by_kind.setdefault(o.get("kind"), []).append(o)

    def named(kind, name):
        return next((o for o in by_kind.get(kind, []) if o["metadata"].get("name") == name), None)

    deployments = by_kind.get("Deployment", [])
    services = by_kind.get("Service", [])
    configmap = named("ConfigMap", "thygon-config")

    for o in objs:
        meta = o.get("metadata") or {}
        if o.get("kind") != "Namespace" and meta.get("namespace") != NAMESPACE:
            problem(where, f"{name_of(o)} is not in namespace {NAMESPACE}")

    # Deployments: probes, resources, config references, replicas vs autoscalers.
    scaled = {}
    for hpa in by_kind.get("HorizontalPodAutoscaler", []):
        scaled.setdefault(hpa["spec"]["scaleTargetRef"]["name"], []).append(name_of(hpa))
    for so in by_kind.get("ScaledObject", []):
        scaled.setdefault(so["spec"]["scaleTargetRef"]["name"], []).append(name_of(so))
    for target, owners in scaled.items():
        if not any(d["metadata"]["name"] == target for d in deployments):
            problem(where, f"{', '.join(owners)} scale(s) Deployment/{target}, which does not exist")
        if len(owners) > 1:
            problem(where, f"Deployment/{target} has more than one autoscaler: {', '.join(owners)}")

    workloads = deployments + by_kind.get("Job", [])
    for dep in workloads:
        dname = name_of(dep)
        if dep["kind"] == "Deployment":
            if dep["metadata"]["name"] in scaled and "replicas" in dep["spec"]:
                problem(where, f"{dname} sets spec.replicas although "
                               f"{scaled[dep['metadata']['name']][0]} owns it")
            sel = ((dep["spec"].get("selector") or {}).get("matchLabels")) or {}
            if not matches(sel, pod_labels(dep)):
                problem(where, f"{dname}: selector does not match its pod labels")
        for c in containers(dep):
            cname = f"{dname} container {c.get('name')}"
            res = c.get("resources") or {}
            if not res.get("requests") or not res.get("limits"):
                problem(where, f"{cname}: needs resources.requests and resources.limits")
            for ref in c.get("envFrom") or []:
                for key, kind in (("configMapRef", "ConfigMap"), ("secretRef", "Secret")):
                    if key in ref and not named(kind, ref[key]["name"]):
                        problem(where, f"{cname}: envFrom {kind}/{ref[key]['name']} does not exist")
            if dep["kind"] != "Deployment":
                continue
            ports = {p.get("name") for p in c.get("ports") or []} | {
                p.get("containerPort") for p in c.get("ports") or []}
            for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
                http = (c.get(probe) or {}).get("httpGet")
                if not http:
                    problem(where, f"{cname}: needs an httpGet {probe} on {path}")
                    continue
                if http.get("path") != path:
                    problem(where, f"{cname}: {probe} must GET {path}, not {http.get('path')}")
                if http.get("port") not in ports:
                    problem(where, f"{cname}: {probe} port {http.get('port')} is not a container port")

    # The worker must outlive its own shutdown grace.
    worker = named("Deployment", "executor-worker")
    if worker:
        grace = float(env_value(configmap, "SHUTDOWN_GRACE_SECONDS", 30))
        term = worker["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)
        if not term > grace:
            problem(where, f"Deployment/executor-worker: terminationGracePeriodSeconds ({term}) "
                           f"must be greater than SHUTDOWN_GRACE_SECONDS ({grace:g})")
    else:
        problem(where, "no Deployment/executor-worker")

    # Services select a Deployment and name one of its ports.
    for svc in services:
        sel = svc["spec"].get("selector") or {}
        targets = [d for d in deployments if matches(sel, pod_labels(d))]
        if not targets:
            problem(where, f"{name_of(svc)}: its selector matches no Deployment")
            continue
        names = {p.get("name") for c in containers(targets[0]) for p in c.get("ports") or []}
        numbers = {p.get("containerPort") for c in containers(targets[0]) for p in c.get("ports") or []}
        for port in svc["spec"].get("ports") or []:
            tp = port.get("targetPort", port.get("port"))
            if tp not in names and tp not in numbers:
                problem(where, f"{name_of(svc)}: targetPort {tp} is no port of {name_of(targets[0])}")

    # One PodDisruptionBudget per Deployment, selecting it.
    for dep in deployments:
        pdbs = [p for p in by_kind.get("PodDisruptionBudget", [])
                if matches(((p["spec"].get("selector") or {}).get("matchLabels")) or {}, pod_labels(dep))]
        if len(pdbs) != 1:
            problem(where, f"{name_of(dep)}: {len(pdbs)} PodDisruptionBudgets select it (want 1)")

    # KEDA: the trigger's queue is the one the code declares; its auth resolves to a Secret key.
    jobs_format = None
    try:
        with open(QUEUE_RS, encoding="utf-8") as f:
            m = re.search(r'jobs:\s*format!\("\{prefix\}([^"]*)"\)', f.read())
            jobs_format = m.group(1) if m else None
    except OSError:
        pass
    if jobs_format is None:
        problem(where, f"cannot find the jobs queue name (jobs: format!(\"{{prefix}}...\")) in "
                       f"{os.path.relpath(QUEUE_RS, REPO)}")
    for so in by_kind.get("ScaledObject", []):
        for trig in so["spec"].get("triggers") or []:
            if trig.get("type") == "rabbitmq" and jobs_format is not None:
                want = env_value(configmap, "QUEUE_PREFIX", "thygon") + jobs_format
                if trig["metadata"].get("queueName") != want:
                    problem(where, f"{name_of(so)}: rabbitmq queueName "
                                   f"{trig['metadata'].get('queueName')!r} is not the jobs queue {want!r}")
            auth = (trig.get("authenticationRef") or {}).get("name")
            if auth:
                ta = named("TriggerAuthentication", auth)
                if not ta:
                    problem(where, f"{name_of(so)}: TriggerAuthentication/{auth} does not exist")
                    continue
                for ref in ta["spec"].get("secretTargetRef") or []:
                    secret = named("Secret", ref["name"])
                    keys = set(((secret or {}).get("stringData") or {}).keys()) | set(
                        ((secret or {}).get("data") or {}).keys())
                    if not secret:
                        problem(where, f"{name_of(ta)}: Secret/{ref['name']} does not exist")
                    elif ref["key"] not in keys:
                        problem(where, f"{name_of(ta)}: Secret/{ref['name']} has no key {ref['key']}")

    # Ingress: backends exist, and the routing table holds.
    for ing in by_kind.get("Ingress", []):
        for rule in ing["spec"].get("rules") or []:
            for p in (rule.get("http") or {}).get("paths") or []:
                backend = p["backend"]["service"]
                svc = named("Service", backend["name"])
                if not svc:
                    problem(where, f"{name_of(ing)}: path {p['path']} -> Service/{backend['name']}, "
                                   "which does not exist")
                    continue
                port = backend.get("port") or {}
                svc_ports = svc["spec"].get("ports") or []
                if "name" in port and port["name"] not in {sp.get("name") for sp in svc_ports}:
                    problem(where, f"{name_of(ing)}: Service/{backend['name']} has no port {port['name']}")
                if "number" in port and port["number"] not in {sp.get("port") for sp in svc_ports}:
                    problem(where, f"{name_of(ing)}: Service/{backend['name']} has no port {port['number']}")
        for url, want in ROUTES:
            got = ingress_target(ing, url)
            if got != want:
                problem(where, f"{name_of(ing)}: {url} goes to {got}, should go to {want}")
    if not by_kind.get("Ingress"):
        problem(where, "no Ingress")


def cmd_k8s(args):
    versions = [v.strip() for v in args.k8s_versions.split(",") if v.strip()]
    objs = []
    for path in args.files:
        label = args.label or path
        for doc in load_docs(path):
            if not isinstance(doc, dict):
                problem(label, "a document that is not a mapping")
                continue
            if doc.get("kind") == "Kustomization":
                continue
            for err in schema_errors(doc, versions):
                problem(label, f"{name_of(doc)}: {err}")
            objs.append(doc)
    if not PROBLEMS:
        cross_checks(objs, args.label or "k8s")
    rc = finish("kubernetes manifests")
    if rc == 0:
        kinds = sorted({o["kind"] for o in objs})
        print(f"ok: {args.label or 'k8s/'}: {len(objs)} objects ({', '.join(kinds)}) valid against Kubernetes "
              f"{', '.join(versions)} (strict) and k8s/schemas/, and consistent")
    return rc


def cmd_kustomization(args):
    path = os.path.join(args.dir, "kustomization.yaml")
    docs = load_docs(path)
    listed = set((docs[0] if docs else {}).get("resources") or [])
    present = {f for f in os.listdir(args.dir)
               if f.endswith((".yaml", ".yml")) and f != "kustomization.yaml"}
    for f in sorted(present - listed):
        problem(path, f"{f} is not listed in resources")
    for f in sorted(listed - present):
        if not os.path.exists(os.path.join(args.dir, f)):
            problem(path, f"resources lists {f}, which does not exist")
    rc = finish("kustomization")
    if rc == 0:
        print(f"ok: {path} lists all {len(present)} manifests")
    return rc


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
        if str(env.get("MIGRATE_ON_START")).lower() != "false":
            problem(where, f"service {name} must set MIGRATE_ON_START: \"false\" (migrate applies the schema)")
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
    k.add_argument("--label", help="name to report instead of the file names (e.g. for stdin)")
    k.add_argument("files", nargs="+")
    kz = sub.add_parser("kustomization")
    kz.add_argument("dir")
    c = sub.add_parser("compose")
    c.add_argument("file")
    c.add_argument("--dockerfile", required=True)
    args = parser.parse_args()
    return {"k8s": cmd_k8s, "kustomization": cmd_kustomization, "compose": cmd_compose}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
