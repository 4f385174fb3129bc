"""A rendered overlay and the checks of its application objects (validate_k8s.py
cross_checks): references, security, images, settings, probes, grace periods, the migrate
Job, autoscalers, Services, PodDisruptionBudgets, and the routing of the base URL."""

import os
import re

import k8s_routing
from deploy_lib import REPO, name_of, problem

BINARIES = ("workflow-service", "runtime-service", "executor-worker")

# Secrets an overlay does not hold but reads: the operator creates them (docs/DEPLOY.md,
# "Secrets"). By overlay directory: {Secret name: the keys it has}.
EXTERNAL_SECRETS = {
    "production": {
        "thygon-secrets": {
            "database-url",
            "migration-database-url",
            "amqp-url",
            "admin-api-key",
            "rabbitmq-management-url",
        },
    },
}
# Overlays that must pin every image by digest and may hold no Secret.
PINNED_OVERLAYS = {"production"}

IMAGE = re.compile(
    r"^thygon/(?P<name>[a-z-]+):(?P<tag>[0-9]+\.[0-9]+\.[0-9]+(?:-[0-9A-Za-z.-]+)?)"
    r"(?:@(?P<digest>sha256:[0-9a-f]{64}))?$"
)


def selector_matches(selector, labels):
    """A LabelSelector (or a plain matchLabels map); empty selects everything."""
    selector = selector or {}
    if "matchLabels" not in selector and "matchExpressions" not in selector:
        selector = {"matchLabels": selector}
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions") or []:
        has, value, values = e["key"] in labels, labels.get(e["key"]), e.get("values") or []
        if {
            "In": not (has and value in values),
            "NotIn": has and value in values,
            "Exists": not has,
            "DoesNotExist": has,
        }.get(e["operator"], True):
            return False
    return True


def pod_spec(w):
    return ((w.get("spec") or {}).get("template") or {}).get("spec") or {}


def pod_labels(w):
    return (((w.get("spec") or {}).get("template") or {}).get("metadata") or {}).get("labels") or {}


def code_int(path, pattern):
    try:
        with open(os.path.join(REPO, path), encoding="utf-8") as f:
            m = re.search(pattern, f.read())
        return int(m.group(1)) if m else None
    except OSError:
        return None


class Render:
    """One rendered overlay: its objects by kind and name, and what it may reference."""

    def __init__(self, overlay, objs):
        self.overlay, self.where = overlay, f"kubectl kustomize k8s/overlays/{overlay}"
        self.by_kind = {}
        for o in objs:
            self.by_kind.setdefault(o.get("kind"), []).append(o)
        self.external = EXTERNAL_SECRETS.get(overlay, {})
        self.pinned = overlay in PINNED_OVERLAYS
        self.deployments = self.kind("Deployment")
        self.configmap = ((self.named("ConfigMap", "thygon-config") or {}).get("data")) or {}

    def kind(self, kind):
        return self.by_kind.get(kind, [])

    def named(self, kind, name):
        return next((o for o in self.kind(kind) if o["metadata"].get("name") == name), None)

    def keys(self, kind, name):
        """The keys of a Secret or ConfigMap of the render or an external one; None: neither."""
        obj = self.named(kind, name)
        if obj is not None:
            return set((obj.get("data") or {}).keys()) | set((obj.get("stringData") or {}).keys())
        if kind == "Secret" and name in self.external:
            return self.external[name]
        return None

    def error(self, message):
        problem(self.where, message)


def effective_env(r, container):
    env = {}
    for ref in container.get("envFrom") or []:
        if "configMapRef" in ref:
            env.update((r.named("ConfigMap", ref["configMapRef"]["name"]) or {}).get("data") or {})
    for e in container.get("env") or []:
        env[e["name"]] = e.get("value", "(from a reference)")
    return env


def check_references(r, w, c, cname):
    for ref in c.get("envFrom") or []:
        for key, kind in (("configMapRef", "ConfigMap"), ("secretRef", "Secret")):
            if key in ref and not ref[key].get("optional") and r.keys(kind, ref[key]["name"]) is None:
                r.error(f"{cname}: envFrom {kind}/{ref[key]['name']} does not exist")
    for e in c.get("env") or []:
        for key, kind in (("secretKeyRef", "Secret"), ("configMapKeyRef", "ConfigMap")):
            ref = (e.get("valueFrom") or {}).get(key)
            if not ref or ref.get("optional"):
                continue
            keys = r.keys(kind, ref["name"])
            if keys is None:
                r.error(
                    f"{cname}: {e['name']} reads {kind}/{ref['name']}, which is neither in the render "
                    f"nor an external Secret of this overlay (k8s_render.py EXTERNAL_SECRETS)"
                )
            elif ref["key"] not in keys:
                r.error(
                    f"{cname}: {e['name']} reads key {ref['key']} of {kind}/{ref['name']}, which has "
                    f"only {', '.join(sorted(keys))}"
                )
    for v in pod_spec(w).get("volumes") or []:
        for key, kind, field in (("secret", "Secret", "secretName"), ("configMap", "ConfigMap", "name")):
            src = v.get(key)
            if src and not src.get("optional") and r.keys(kind, src.get(field)) is None:
                r.error(
                    f"{name_of(w)}: volume {v['name']} reads {kind}/{src.get(field)}, which does not exist"
                )


def check_security(r, w, c, cname):
    pod = pod_spec(w).get("securityContext") or {}
    sec = c.get("securityContext") or {}
    if pod.get("runAsNonRoot") is not True and sec.get("runAsNonRoot") is not True:
        r.error(f"{cname}: runAsNonRoot must be true")
    if ((pod.get("seccompProfile") or sec.get("seccompProfile") or {}).get("type")) != "RuntimeDefault":
        r.error(f"{cname}: seccompProfile must be RuntimeDefault")
    if sec.get("allowPrivilegeEscalation") is not False:
        r.error(f"{cname}: allowPrivilegeEscalation must be false")
    if sec.get("readOnlyRootFilesystem") is not True:
        r.error(f"{cname}: readOnlyRootFilesystem must be true")
    if (sec.get("capabilities") or {}).get("drop") != ["ALL"]:
        r.error(f"{cname}: capabilities must drop ALL")
    res = c.get("resources") or {}
    if not res.get("requests") or not res.get("limits"):
        r.error(f"{cname}: needs resources.requests and resources.limits")


def check_image(r, c, cname, want_binary):
    m = IMAGE.match(str(c.get("image", "")))
    if not m:
        r.error(
            f"{cname}: image {c.get('image')!r} is not thygon/<name>:<version>[@sha256:<64 hex>] "
            "(a version tag, never latest)"
        )
        return None
    if m["name"] != want_binary:
        r.error(f"{cname}: image {c['image']} is not thygon/{want_binary}")
    if r.pinned and not m["digest"]:
        r.error(f"{cname}: image {c['image']} is not pinned by digest (images: digest: in the overlay)")
    return m["tag"]


def container_ports(c):
    return {p.get("name"): p.get("containerPort") for p in c.get("ports") or []}


def addr_port(value):
    m = re.fullmatch(r".*:([0-9]+)", str(value or ""))
    return int(m.group(1)) if m else None


def check_deployment(r, dep, c, cname, env, api):
    ports = container_ports(c)
    if "MIGRATE_ON_START" in env:
        r.error(f"{cname}: MIGRATE_ON_START is read by no process any more (the migrate Job migrates)")
    if not str(env.get("DB_POOL_SIZE", "")).isdigit() or int(env["DB_POOL_SIZE"]) < 1:
        r.error(f"{cname}: DB_POOL_SIZE must be set to a positive number, not {env.get('DB_POOL_SIZE')!r}")
    if addr_port(env.get("HTTP_ADDR")) != ports.get("http"):
        r.error(
            f"{cname}: HTTP_ADDR {env.get('HTTP_ADDR')!r} is not on the container port named http "
            f"({ports.get('http')})"
        )
    if addr_port(env.get("METRICS_ADDR")) is None or addr_port(env.get("METRICS_ADDR")) != ports.get(
        "metrics"
    ):
        r.error(
            f"{cname}: METRICS_ADDR {env.get('METRICS_ADDR')!r} must be set, on the container port "
            f"named metrics ({ports.get('metrics')})"
        )
    for probe, path in (
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ):
        http = (c.get(probe) or {}).get("httpGet")
        if not http:
            r.error(f"{cname}: needs an httpGet {probe} on {path}")
        elif http.get("path") != path:
            r.error(f"{cname}: {probe} must GET {path}, not {http.get('path')}")
        elif http.get("port") not in ("http", ports.get("http")):
            r.error(f"{cname}: {probe} must use the http port, not {http.get('port')}")
    term = pod_spec(dep).get("terminationGracePeriodSeconds", 30)
    name = dep["metadata"]["name"]
    if api:
        # API pods: preStop drains, then SIGTERM starts the HTTP server's shutdown.
        pre = (((c.get("lifecycle") or {}).get("preStop") or {}).get("exec") or {}).get("command")
        if pre != [f"/usr/local/bin/{name}", "prestop"]:
            r.error(f'{cname}: preStop must exec ["/usr/local/bin/{name}", "prestop"], not {pre}')
        drain = float(env.get("PRESTOP_DRAIN_SECONDS", 5))
        shutdown = code_int(f"{name}/src/startup.rs", r"\.shutdown_timeout\(([0-9]+)\)")
        if shutdown is None:
            r.error(f"cannot find .shutdown_timeout(N) in {name}/src/startup.rs")
        elif not term > drain + shutdown:
            r.error(
                f"{name_of(dep)}: terminationGracePeriodSeconds ({term}) must exceed PRESTOP_DRAIN_SECONDS "
                f"({drain:g}) + the HTTP shutdown timeout ({shutdown}, {name}/src/startup.rs)"
            )
    else:
        grace = float(env.get("SHUTDOWN_GRACE_SECONDS", 30))
        if not term > grace:
            r.error(
                f"{name_of(dep)}: terminationGracePeriodSeconds ({term}) must be greater than "
                f"SHUTDOWN_GRACE_SECONDS ({grace:g})"
            )


def check_migrate_job(r, job, c, cname, tag):
    if c.get("args") != ["migrate"]:
        r.error(f'{cname}: must run `workflow-service migrate` (args: ["migrate"])')
    ref = next(
        (
            (e.get("valueFrom") or {}).get("secretKeyRef")
            for e in c.get("env") or []
            if e["name"] == "MIGRATION_DATABASE_URL"
        ),
        None,
    )
    if not ref or ref.get("key") != "migration-database-url":
        r.error(f"{cname}: MIGRATION_DATABASE_URL must come from the Secret's key migration-database-url")
    if tag and job["metadata"]["name"] != "thygon-migrate-" + tag.replace(".", "-"):
        r.error(
            f"{name_of(job)}: a release's migrate Job is named thygon-migrate-{tag.replace('.', '-')} "
            f"(its image's tag {tag}; the overlay's patch renames it), so a new release gets a new Job"
        )
    if not job["spec"].get("activeDeadlineSeconds"):
        r.error(f"{name_of(job)}: needs activeDeadlineSeconds (the pods' startup probes wait that long)")
    if job["spec"]["template"]["spec"].get("restartPolicy") not in ("OnFailure", "Never"):
        r.error(f"{name_of(job)}: restartPolicy must be OnFailure or Never")


def check_workloads(r, scaled):
    tags = set()
    api_names = {
        d["metadata"]["name"]
        for d in r.deployments
        for s in r.kind("Service")
        if selector_matches((s.get("spec") or {}).get("selector"), pod_labels(d))
    }
    for w in r.deployments + r.kind("Job"):
        for c in pod_spec(w).get("containers") or []:
            cname = f"{name_of(w)} container {c.get('name')}"
            check_security(r, w, c, cname)
            check_references(r, w, c, cname)
            env = effective_env(r, c)
            if w["kind"] == "Deployment":
                name = w["metadata"]["name"]
                if name not in BINARIES:
                    r.error(f"{name_of(w)}: not one of {', '.join(BINARIES)}")
                tags.add(check_image(r, c, cname, name))
                check_deployment(r, w, c, cname, env, name in api_names)
            else:
                tag = check_image(r, c, cname, "workflow-service")
                tags.add(tag)
                check_migrate_job(r, w, c, cname, tag)
    if len(tags - {None}) > 1:
        r.error(
            f"the images are of several versions ({', '.join(sorted(tags - {None}))}): one release at a time"
        )
    jobs = r.kind("Job")
    if not jobs:
        r.error("no migrate Job")
    # A process serves nothing (no /healthz) until the migrate Job has applied its migrations:
    # it waits SCHEMA_WAIT_SECONDS for them, then refuses to start. Both that wait and the
    # startup probe must last as long as the Job may run.
    deadline = max((j["spec"].get("activeDeadlineSeconds", 0) for j in jobs), default=0)
    for d in r.deployments:
        name = d["metadata"]["name"]
        for c in pod_spec(d).get("containers") or []:
            wait = effective_env(r, c).get("SCHEMA_WAIT_SECONDS", "0")
            if not re.fullmatch(r"[0-9]+", str(wait)) or int(wait) < deadline:
                r.error(
                    f"{name_of(d)}: SCHEMA_WAIT_SECONDS={wait!r} is shorter than the migrate Job's "
                    f"activeDeadlineSeconds ({deadline}s): pods started with the Job would refuse to start"
                )
            probe = c.get("startupProbe") or {}
            window = probe.get("periodSeconds", 10) * probe.get("failureThreshold", 3)
            if window < deadline:
                r.error(
                    f"{name_of(d)}: the startupProbe gives up after {window}s, before the migrate Job's "
                    f"activeDeadlineSeconds ({deadline}s): pods waiting for the schema would be restarted"
                )
        if name in scaled and "replicas" in d["spec"]:
            r.error(f"{name_of(d)} sets spec.replicas although {scaled[name][0]} owns it")
        if not selector_matches((d["spec"].get("selector") or {}), pod_labels(d)):
            r.error(f"{name_of(d)}: selector does not match its pod labels")
    for name in BINARIES:
        if not r.named("Deployment", name):
            r.error(f"no Deployment/{name}")


def check_autoscalers(r):
    scaled, minimum = {}, {}
    for hpa in r.kind("HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]["name"]
        scaled.setdefault(target, []).append(name_of(hpa))
        minimum[target] = hpa["spec"].get("minReplicas", 1)
    for so in r.kind("ScaledObject"):
        target = so["spec"]["scaleTargetRef"]["name"]
        scaled.setdefault(target, []).append(name_of(so))
        minimum[target] = so["spec"].get("minReplicaCount", 0)
    for target, owners in scaled.items():
        if not r.named("Deployment", target):
            r.error(f"{', '.join(owners)} scale(s) Deployment/{target}, which does not exist")
        if len(owners) > 1:
            r.error(f"Deployment/{target} has more than one autoscaler: {', '.join(owners)}")
    if r.pinned:
        # A PodDisruptionBudget lets a node drain only with a spare pod.
        for d in r.deployments:
            name = d["metadata"]["name"]
            count = minimum.get(name, d["spec"].get("replicas", 1))
            if count < 2:
                r.error(
                    f"{name_of(d)}: at least 2 pods in {r.overlay} (replicas or the autoscaler's minimum), not {count}"
                )
    return scaled


BUDGET_ANNOTATION = "thygon.io/postgres-max-connections"
# superuser_reserved_connections' default: slots ordinary roles never get.
RESERVED_CONNECTIONS = 3
# The defaults of DB_POOL_SIZE in the code (each crate's config.rs DEFAULT_DB_POOL_SIZE).
DEFAULT_POOL = {"workflow-service": 4, "runtime-service": 8, "executor-worker": 4}


def surge(d):
    """The extra pods a rolling update of Deployment d adds (maxSurge; default 25%, rounded up)."""
    value = ((d["spec"].get("strategy") or {}).get("rollingUpdate") or {}).get("maxSurge", "25%")
    return value if isinstance(value, int) else None


def check_connection_budget(r):
    """docs/DEPLOY.md "Sizing": at the autoscalers' maxima, plus a rolling update's surge and
    the migrate Job, the processes' pools fit in what the thygon-config ConfigMap says
    PostgreSQL (or the PgBouncer in front of it) accepts."""
    cm = r.named("ConfigMap", "thygon-config") or {}
    declared = ((cm.get("metadata") or {}).get("annotations") or {}).get(BUDGET_ANNOTATION)
    if declared is None or not str(declared).isdigit():
        r.error(f"ConfigMap/thygon-config: annotation {BUDGET_ANNOTATION} (a number) is missing")
        return
    most = {}
    for hpa in r.kind("HorizontalPodAutoscaler"):
        most[hpa["spec"]["scaleTargetRef"]["name"]] = hpa["spec"]["maxReplicas"]
    for so in r.kind("ScaledObject"):
        most[so["spec"]["scaleTargetRef"]["name"]] = so["spec"].get("maxReplicaCount", 100)
    total, parts = 1, ["1 (migrate Job)"]
    for d in r.deployments:
        name = d["metadata"]["name"]
        extra = surge(d)
        pods = most.get(name, d["spec"].get("replicas", 1))
        if extra is None:
            extra = -(-pods // 4)
        pool = DEFAULT_POOL.get(name, 0)
        for c in pod_spec(d).get("containers") or []:
            value = effective_env(r, c).get("DB_POOL_SIZE")
            if value is not None and str(value).isdigit():
                pool = int(value)
        total += (pods + extra) * pool
        parts.append(f"{name} ({pods}+{extra}) x {pool}")
    allowed = int(declared) - RESERVED_CONNECTIONS
    if total > allowed:
        r.error(
            f"connection budget: {' + '.join(parts)} = {total} connections at the autoscalers' maxima, "
            f"over {allowed} ({BUDGET_ANNOTATION}={declared} minus {RESERVED_CONNECTIONS} reserved): "
            "lower a maximum or DB_POOL_SIZE, or raise max_connections (docs/DEPLOY.md, \"Sizing\")"
        )
    return total, allowed


def check_services_and_pdbs(r):
    for svc in r.kind("Service"):
        targets = [d for d in r.deployments if selector_matches(svc["spec"].get("selector"), pod_labels(d))]
        if not targets:
            r.error(f"{name_of(svc)}: its selector matches no Deployment")
            continue
        ports = {}
        for c in pod_spec(targets[0]).get("containers") or []:
            ports.update(container_ports(c))
        for port in svc["spec"].get("ports") or []:
            tp = port.get("targetPort", port.get("port"))
            if tp not in ports and tp not in ports.values():
                r.error(f"{name_of(svc)}: targetPort {tp} is no port of {name_of(targets[0])}")
            if tp in ("metrics", ports.get("metrics")):
                r.error(f"{name_of(svc)}: exposes the metrics port; /metrics stays off every Service")
    for dep in r.deployments:
        pdbs = [
            p
            for p in r.kind("PodDisruptionBudget")
            if selector_matches(p["spec"].get("selector"), pod_labels(dep))
        ]
        if len(pdbs) != 1:
            r.error(f"{name_of(dep)}: {len(pdbs)} PodDisruptionBudgets select it (want 1)")


def check_routing(r):
    ingresses, routes = r.kind("Ingress"), r.kind("HTTPRoute")
    if not ingresses and not routes:
        r.error("no Ingress and no HTTPRoute: nothing routes the base URL")
    for ing in ingresses:
        for rule in ing["spec"].get("rules") or []:
            for p in (rule.get("http") or {}).get("paths") or []:
                backend = p["backend"]["service"]
                svc = r.named("Service", backend["name"])
                port = backend.get("port") or {}
                if not svc:
                    r.error(
                        f"{name_of(ing)}: path {p['path']} -> Service/{backend['name']}, which does not exist"
                    )
                elif port.get("name", port.get("number")) not in {
                    sp.get("name" if "name" in port else "port") for sp in svc["spec"].get("ports") or []
                }:
                    r.error(f"{name_of(ing)}: Service/{backend['name']} has no port {port}")
    for route in routes:
        if not route["spec"].get("parentRefs"):
            r.error(f"{name_of(route)}: no parentRefs (the Gateway it attaches to)")
        for rule in route["spec"].get("rules") or []:
            for b in rule.get("backendRefs") or []:
                svc = r.named("Service", b["name"])
                if not svc:
                    r.error(f"{name_of(route)}: backend Service/{b['name']} does not exist")
                elif b.get("port") not in {sp.get("port") for sp in svc["spec"].get("ports") or []}:
                    r.error(f"{name_of(route)}: Service/{b['name']} has no port {b.get('port')}")
    if ingresses:
        k8s_routing.check_ingresses(ingresses, r.where)
    k8s_routing.check_httproutes(routes, r.where)
