"""Checks of k8s/ (scripts/validate_deploy.py k8s; README "Validation", docs/DEPLOY.md "Files").

- The tree, with or without kubectl: every kustomization's resources, components, patches and
  generator files exist, and every file of its directory is one of them; every component and
  the base are used; every YAML object against its schema (Kubernetes kinds with
  kubernetes-validate, strict; the CRDs with the hand-written k8s/schemas/); patch files
  are well formed; the schemas are valid JSON Schemas.
- Each overlay as `kubectl kustomize` renders it: the schemas again, then the objects against
  each other and against the code (cross_checks).
"""

import ipaddress
import json
import os
import re

import jsonschema

import k8s_routing
from deploy_lib import REPO, load_docs, problem, rel

SCHEMA_DIR = os.path.join(REPO, "k8s", "schemas")
QUEUE_RS = os.path.join(REPO, "shared-models", "src", "queue.rs")
README = os.path.join(REPO, "README.md")
BINARIES = ("workflow-service", "runtime-service", "executor-worker")

# Secrets an overlay does not hold but reads: the operator creates them (docs/DEPLOY.md,
# "Secrets"). By overlay directory: {Secret name: the keys it has}.
EXTERNAL_SECRETS = {
    "production": {
        "thygon-secrets": {"database-url", "migration-database-url", "amqp-url", "admin-api-key",
                           "rabbitmq-management-url"},
    },
}
# Overlays that must pin every image by digest and may hold no Secret.
PINNED_OVERLAYS = {"production"}

# The ranges the workers' internet egress must leave out (networkpolicies.yaml).
WORKER_EGRESS_EXCEPT = {
    "0.0.0.0/0": {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16",
                  "127.0.0.0/8"},
    "::/0": {"fc00::/7", "fe80::/10"},
}

IMAGE = re.compile(r"^thygon/(?P<name>[a-z-]+):(?P<tag>[0-9]+\.[0-9]+\.[0-9]+(?:-[0-9A-Za-z.-]+)?)"
                   r"(?:@(?P<digest>sha256:[0-9a-f]{64}))?$")
KUSTOMIZE_KINDS = {"Kustomization", "Component"}
DEPRECATED_FIELDS = {"bases", "patchesStrategicMerge", "patchesJson6902", "commonLabels", "vars"}


def name_of(obj):
    return f"{obj.get('kind', '?')}/{(obj.get('metadata') or {}).get('name', '?')}"


# ---- schemas --------------------------------------------------------------------------------

_VALIDATORS = {}


def _crd_validator(api, kind):
    """The hand-written schema of a custom resource, or None: k8s/schemas/<group>_<version>_<kind>.json."""
    path = os.path.join(SCHEMA_DIR, f"{api.replace('/', '_')}_{kind.lower()}.json")
    if path not in _VALIDATORS:
        _VALIDATORS[path] = None
        if os.path.exists(path):
            try:
                with open(path, encoding="utf-8") as f:
                    schema = json.load(f)
                jsonschema.Draft202012Validator.check_schema(schema)
                _VALIDATORS[path] = jsonschema.Draft202012Validator(schema)
            except (OSError, ValueError, jsonschema.SchemaError) as e:
                _VALIDATORS[path] = f"{rel(path)} is not a valid JSON Schema: {str(e).splitlines()[0]}"
    return path, _VALIDATORS[path]


def schema_errors(obj, versions):
    api, kind = str(obj.get("apiVersion", "")), str(obj.get("kind", ""))
    if not api or not kind:
        return ["no apiVersion or kind"]
    path, validator = _crd_validator(api, kind)
    if isinstance(validator, str):
        return [validator]
    if validator is not None:
        return [f"{'.'.join(str(p) for p in e.absolute_path) or '(top)'}: {e.message} [{rel(path)}]"
                for e in sorted(validator.iter_errors(obj), key=lambda e: list(e.path))]

    import kubernetes_validate  # noqa: PLC0415 (slow to import; only the k8s checks need it)

    out = []
    for version in versions:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            where = ".".join(str(p) for p in e.path) or "(top)"
            out.append(f"{where}: {e.message} [Kubernetes {e.version}, strict]")
        except kubernetes_validate.SchemaNotFoundError:
            out.append(f"no Kubernetes {version} schema for {api} {kind}, and no {rel(path)} (a typo, "
                       "or a CRD without a schema in k8s/schemas/)")
    return out


def validate_objects(objs, versions, where):
    for obj in objs:
        if not isinstance(obj, dict):
            problem(where, "a document that is not a mapping")
            continue
        for err in schema_errors(obj, versions):
            problem(where, f"{name_of(obj)}: {err}")


# ---- the tree -------------------------------------------------------------------------------


def _generator_files(gen):
    for entry in (gen.get("files") or []) + (gen.get("envs") or []):
        yield entry.split("=", 1)[-1]


def _check_patch_file(path):
    docs = load_docs(path)
    for doc in docs:
        if isinstance(doc, list):
            for op in doc:
                if not isinstance(op, dict) or op.get("op") not in {"add", "remove", "replace", "move",
                                                                    "copy", "test"} or "path" not in op:
                    problem(rel(path), f"not a JSON patch operation: {op!r}")
        elif not isinstance(doc, dict) or not doc.get("apiVersion") or not doc.get("kind") or not (
                doc.get("metadata") or {}).get("name"):
            problem(rel(path), "a strategic merge patch needs apiVersion, kind and metadata.name")


def check_tree(root, versions):
    """Structural checks of k8s/ and the schemas of every object file; returns the overlays."""
    schema_dir = os.path.join(root, "schemas")
    kustomizations = {}
    for d, subdirs, files in os.walk(root):
        subdirs[:] = sorted(s for s in subdirs if os.path.join(d, s) != schema_dir)
        if "kustomization.yaml" in files:
            docs = load_docs(os.path.join(d, "kustomization.yaml"))
            kustomizations[d] = docs[0] if docs and isinstance(docs[0], dict) else {}
        elif files and d != root:
            problem(rel(d), "a directory of k8s/ without a kustomization.yaml")

    used, resource_files, patch_files = set(), [], []
    for d, k in sorted(kustomizations.items()):
        where = rel(os.path.join(d, "kustomization.yaml"))
        if k.get("kind", "Kustomization") not in KUSTOMIZE_KINDS:
            problem(where, f"kind {k.get('kind')}: not a Kustomization or Component")
        for field in sorted(DEPRECATED_FIELDS & set(k)):
            problem(where, f"`{field}` is deprecated in kustomize v5; use resources, patches or labels")
        referenced = set()

        def exists(entry, what, where=where, d=d):
            path = os.path.normpath(os.path.join(d, entry))
            if not os.path.exists(path):
                problem(where, f"{what} {entry} does not exist")
                return None
            return path

        for entry in k.get("resources") or []:
            path = exists(entry, "resource")
            if path and os.path.isdir(path):
                if (kustomizations.get(path) or {}).get("kind", "Kustomization") != "Kustomization":
                    problem(where, f"resource {entry} is not a kustomization (a Component goes in components)")
                used.add(path)
            elif path:
                referenced.add(path)
                resource_files.append(path)
        for entry in k.get("components") or []:
            path = exists(entry, "component")
            if path and (kustomizations.get(path) or {}).get("kind") != "Component":
                problem(where, f"component {entry} is not a directory with a kind: Component kustomization")
            if path:
                used.add(path)
        for patch in k.get("patches") or []:
            if "path" in patch:
                path = exists(patch["path"], "patch")
                if path:
                    referenced.add(path)
                    patch_files.append(path)
            elif "patch" not in patch:
                problem(where, f"a patch with neither path nor patch: {patch!r}")
        for gen in (k.get("configMapGenerator") or []) + (k.get("secretGenerator") or []):
            for entry in _generator_files(gen):
                path = exists(entry, "generator file")
                if path:
                    referenced.add(path)
                    if path.endswith(".json"):
                        _check_json(path)
        for entry in k.get("configurations") or []:
            path = exists(entry, "configuration")
            if path:
                referenced.add(path)
        for f in sorted(os.listdir(d)):
            path = os.path.join(d, f)
            if os.path.isfile(path) and f != "kustomization.yaml" and path not in referenced:
                problem(where, f"{f} is in the directory but not referenced (resources, patches, generators)")

    overlays_dir = os.path.join(root, "overlays")
    overlays = sorted(d for d in kustomizations if os.path.dirname(d) == overlays_dir)
    for d in sorted(kustomizations):
        if d not in used and d not in overlays:
            problem(rel(d), "used by no overlay (no resources or components entry names it)")
    if not overlays:
        problem(rel(overlays_dir), "no overlay")

    for path in sorted(set(resource_files)):
        validate_objects(load_docs(path), versions, rel(path))
    for path in sorted(set(patch_files)):
        _check_patch_file(path)
    for f in sorted(os.listdir(schema_dir)):
        m = re.fullmatch(r"(.+)_(v[0-9a-z]+)_([a-z]+)\.json", f)
        validator = _crd_validator(f"{m[1]}/{m[2]}", m[3])[1] if m else "not named <group>_<version>_<kind>.json"
        if isinstance(validator, str):
            problem(rel(os.path.join(schema_dir, f)), validator)
    return overlays, len(kustomizations), len(set(resource_files))


def _check_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            json.load(f)
    except (OSError, ValueError) as e:
        problem(rel(path), f"not JSON: {e}")


# ---- a rendered overlay ---------------------------------------------------------------------


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
        if {"In": not (has and value in values), "NotIn": has and value in values,
                "Exists": not has, "DoesNotExist": has}.get(e["operator"], True):
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
                r.error(f"{cname}: {e['name']} reads {kind}/{ref['name']}, which is neither in the render "
                        f"nor an external Secret of this overlay (validate_k8s.py EXTERNAL_SECRETS)")
            elif ref["key"] not in keys:
                r.error(f"{cname}: {e['name']} reads key {ref['key']} of {kind}/{ref['name']}, which has "
                        f"only {', '.join(sorted(keys))}")
    for v in pod_spec(w).get("volumes") or []:
        for key, kind, field in (("secret", "Secret", "secretName"), ("configMap", "ConfigMap", "name")):
            src = v.get(key)
            if src and not src.get("optional") and r.keys(kind, src.get(field)) is None:
                r.error(f"{name_of(w)}: volume {v['name']} reads {kind}/{src.get(field)}, which does not exist")


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
        r.error(f"{cname}: image {c.get('image')!r} is not thygon/<name>:<version>[@sha256:<64 hex>] "
                "(a version tag, never latest)")
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
    if env.get("MIGRATE_ON_START") != "false":
        r.error(f"{cname}: MIGRATE_ON_START must be \"false\" (the migrate Job migrates), not "
                f"{env.get('MIGRATE_ON_START')!r}")
    if not str(env.get("DB_POOL_SIZE", "")).isdigit() or int(env["DB_POOL_SIZE"]) < 1:
        r.error(f"{cname}: DB_POOL_SIZE must be set to a positive number, not {env.get('DB_POOL_SIZE')!r}")
    if addr_port(env.get("HTTP_ADDR")) != ports.get("http"):
        r.error(f"{cname}: HTTP_ADDR {env.get('HTTP_ADDR')!r} is not on the container port named http "
                f"({ports.get('http')})")
    if addr_port(env.get("METRICS_ADDR")) is None or addr_port(env.get("METRICS_ADDR")) != ports.get("metrics"):
        r.error(f"{cname}: METRICS_ADDR {env.get('METRICS_ADDR')!r} must be set, on the container port "
                f"named metrics ({ports.get('metrics')})")
    for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
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
            r.error(f"{cname}: preStop must exec [\"/usr/local/bin/{name}\", \"prestop\"], not {pre}")
        drain = float(env.get("PRESTOP_DRAIN_SECONDS", 5))
        shutdown = code_int(f"{name}/src/startup.rs", r"\.shutdown_timeout\(([0-9]+)\)")
        if shutdown is None:
            r.error(f"cannot find .shutdown_timeout(N) in {name}/src/startup.rs")
        elif not term > drain + shutdown:
            r.error(f"{name_of(dep)}: terminationGracePeriodSeconds ({term}) must exceed PRESTOP_DRAIN_SECONDS "
                    f"({drain:g}) + the HTTP shutdown timeout ({shutdown}, {name}/src/startup.rs)")
    else:
        grace = float(env.get("SHUTDOWN_GRACE_SECONDS", 30))
        if not term > grace:
            r.error(f"{name_of(dep)}: terminationGracePeriodSeconds ({term}) must be greater than "
                    f"SHUTDOWN_GRACE_SECONDS ({grace:g})")


def check_migrate_job(r, job, c, cname, tag):
    if c.get("args") != ["migrate"]:
        r.error(f"{cname}: must run `workflow-service migrate` (args: [\"migrate\"])")
    ref = next(((e.get("valueFrom") or {}).get("secretKeyRef") for e in c.get("env") or []
                if e["name"] == "MIGRATION_DATABASE_URL"), None)
    if not ref or ref.get("key") != "migration-database-url":
        r.error(f"{cname}: MIGRATION_DATABASE_URL must come from the Secret's key migration-database-url")
    if tag and job["metadata"]["name"] != "thygon-migrate-" + tag.replace(".", "-"):
        r.error(f"{name_of(job)}: a release's migrate Job is named thygon-migrate-{tag.replace('.', '-')} "
                f"(its image's tag {tag}; the overlay's patch renames it), so a new release gets a new Job")
    if job["spec"]["template"]["spec"].get("restartPolicy") not in ("OnFailure", "Never"):
        r.error(f"{name_of(job)}: restartPolicy must be OnFailure or Never")


def check_workloads(r, scaled):
    tags = set()
    api_names = {d["metadata"]["name"] for d in r.deployments for s in r.kind("Service")
                 if selector_matches((s.get("spec") or {}).get("selector"), pod_labels(d))}
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
        r.error(f"the images are of several versions ({', '.join(sorted(tags - {None}))}): one release at a time")
    if not r.kind("Job"):
        r.error("no migrate Job")
    for d in r.deployments:
        name = d["metadata"]["name"]
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
                r.error(f"{name_of(d)}: at least 2 pods in {r.overlay} (replicas or the autoscaler's minimum), not {count}")
    return scaled


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
        pdbs = [p for p in r.kind("PodDisruptionBudget")
                if selector_matches(p["spec"].get("selector"), pod_labels(dep))]
        if len(pdbs) != 1:
            r.error(f"{name_of(dep)}: {len(pdbs)} PodDisruptionBudgets select it (want 1)")


def check_keda(r):
    m = None
    try:
        with open(QUEUE_RS, encoding="utf-8") as f:
            m = re.search(r'jobs:\s*format!\("\{prefix\}([^"]*)"\)', f.read())
    except OSError:
        pass
    if m is None and r.kind("ScaledObject"):
        r.error(f"cannot find the jobs queue name (jobs: format!(\"{{prefix}}...\")) in {rel(QUEUE_RS)}")
    for so in r.kind("ScaledObject"):
        for trig in so["spec"].get("triggers") or []:
            meta = trig.get("metadata") or {}
            if trig.get("type") == "rabbitmq":
                want = r.configmap.get("QUEUE_PREFIX", "thygon") + (m.group(1) if m else "")
                if m and meta.get("queueName") != want:
                    r.error(f"{name_of(so)}: rabbitmq queueName {meta.get('queueName')!r} is not the jobs queue {want!r}")
                # Jobs the workers hold are work too: ready + unacknowledged, which only the
                # management API (protocol http) reports.
                if meta.get("protocol") != "http" or meta.get("excludeUnacknowledged") != "false":
                    r.error(f"{name_of(so)}: the rabbitmq trigger must count unacknowledged messages: "
                            f"protocol: http and excludeUnacknowledged: \"false\" (it has protocol "
                            f"{meta.get('protocol')!r}, excludeUnacknowledged {meta.get('excludeUnacknowledged')!r})")
                if meta.get("mode") != "QueueLength":
                    r.error(f"{name_of(so)}: the rabbitmq trigger's mode must be QueueLength")
            auth = (trig.get("authenticationRef") or {}).get("name")
            ta = r.named("TriggerAuthentication", auth) if auth else None
            if auth and not ta:
                r.error(f"{name_of(so)}: TriggerAuthentication/{auth} does not exist")
            for ref in ((ta or {}).get("spec") or {}).get("secretTargetRef") or []:
                keys = r.keys("Secret", ref["name"])
                if keys is None:
                    r.error(f"{name_of(ta)}: Secret/{ref['name']} is neither in the render nor external")
                elif ref["key"] not in keys:
                    r.error(f"{name_of(ta)}: Secret/{ref['name']} has no key {ref['key']}")


def readme_alert_expressions():
    """The Prometheus expressions of README's "What to alert on" table."""
    with open(README, encoding="utf-8") as f:
        text = f.read()
    section = text.split("### What to alert on", 1)[-1].split("\n#", 1)[0]
    out = []
    for line in section.splitlines():
        cells = line.split("|")
        code = re.findall(r"`([^`]+)`", cells[2]) if len(cells) > 3 else []
        # Rows that name an endpoint (`/ops/workers` ...) are no Prometheus expression.
        if code and not code[0].startswith("/"):
            out += [e for e in code if not e.startswith("/")]
    return out


def check_monitoring(r):
    monitors = r.kind("PodMonitor")
    rules = r.kind("PrometheusRule")
    if not monitors and not rules:
        return
    for dep in r.deployments:
        c = (pod_spec(dep).get("containers") or [{}])[0]
        ports = container_ports(c)
        scraped = [pm for pm in monitors if selector_matches(pm["spec"].get("selector"), pod_labels(dep))
                   and any(e.get("port") == "metrics" and "metrics" in ports
                           for e in pm["spec"].get("podMetricsEndpoints") or [])]
        if not scraped:
            r.error(f"{name_of(dep)}: no PodMonitor scrapes its `metrics` port")
    exprs = {" ".join(str(rule.get("expr", "")).split()) for pr in rules
             for g in pr["spec"].get("groups") or [] for rule in g.get("rules") or []}
    for want in readme_alert_expressions():
        if " ".join(want.split()) not in exprs:
            r.error(f"README \"What to alert on\": `{want}` is in no PrometheusRule of the render")
    for metric in ("thygon_pending_runs_requeued_total", "thygon_dead_letters_redriven_total"):
        if not any(metric in e for e in exprs):
            r.error(f"no alert on {metric}")
    dashboards = [cm for cm in r.kind("ConfigMap")
                  if ((cm["metadata"].get("labels") or {}).get("grafana_dashboard")) == "1"]
    if not dashboards:
        r.error("no Grafana dashboard (a ConfigMap labelled grafana_dashboard: \"1\")")
    for cm in dashboards:
        for key, value in (cm.get("data") or {}).items():
            try:
                dash = json.loads(value)
            except ValueError as e:
                r.error(f"{name_of(cm)}: {key} is not JSON: {e}")
                continue
            if not dash.get("uid") or not dash.get("panels"):
                r.error(f"{name_of(cm)}: {key} needs a uid and panels")
            for panel in dash.get("panels") or []:
                if not [t for t in panel.get("targets") or [] if t.get("expr")]:
                    r.error(f"{name_of(cm)}: panel {panel.get('title')!r} has no query")


def _allows_port(rule, c):
    ports = container_ports(c)
    for p in rule.get("ports") or [{}]:
        if "port" not in p or p["port"] in ports or p["port"] in ports.values():
            yield p.get("port")


def check_netpol(r):
    policies = r.kind("NetworkPolicy")
    if not policies:
        return
    every = [p for p in policies if not (p["spec"].get("podSelector") or {})]
    if not any(set(p["spec"].get("policyTypes") or []) == {"Ingress", "Egress"}
               and not p["spec"].get("ingress") and not p["spec"].get("egress") for p in every):
        r.error("NetworkPolicies without a default deny (podSelector {}, policyTypes Ingress and Egress, no rules)")
    dns = {(port.get("protocol", "TCP"), port.get("port")) for p in every for rule in p["spec"].get("egress") or []
           for port in rule.get("ports") or []}
    if not {("UDP", 53), ("TCP", 53)} <= dns:
        r.error("no NetworkPolicy lets every pod reach DNS (port 53, UDP and TCP)")
    for p in policies:
        for rule in p["spec"].get("egress") or []:
            for peer in rule.get("to") or []:
                block = peer.get("ipBlock") or {}
                cidr = block.get("cidr")
                if cidr in WORKER_EGRESS_EXCEPT:
                    missing = WORKER_EGRESS_EXCEPT[cidr] - set(block.get("except") or [])
                    if missing:
                        r.error(f"{name_of(p)}: egress to {cidr} must leave out {', '.join(sorted(missing))}")
                elif cidr:
                    try:
                        ipaddress.ip_network(cidr)
                    except ValueError:
                        r.error(f"{name_of(p)}: {cidr} is not a network")
    worker = r.named("Deployment", "executor-worker")
    if worker and not any(
            (peer.get("ipBlock") or {}).get("cidr") == "0.0.0.0/0"
            for p in policies if selector_matches(p["spec"].get("podSelector"), pod_labels(worker))
            for rule in p["spec"].get("egress") or [] for peer in rule.get("to") or []):
        r.error("no NetworkPolicy lets the workers reach the internet (0.0.0.0/0 without the inside ranges)")
    for dep in r.deployments:
        c = (pod_spec(dep).get("containers") or [{}])[0]
        ingress = [rule for p in policies if selector_matches(p["spec"].get("podSelector"), pod_labels(dep))
                   for rule in p["spec"].get("ingress") or []]
        allowed = {port for rule in ingress for port in _allows_port(rule, c)}
        if r.kind("PodMonitor") and not allowed & {None, "metrics", container_ports(c).get("metrics")}:
            r.error(f"{name_of(dep)}: no NetworkPolicy lets Prometheus reach its metrics port")
        serves = any(selector_matches(s["spec"].get("selector"), pod_labels(dep)) for s in r.kind("Service"))
        if serves and not allowed & {None, "http", container_ports(c).get("http")}:
            r.error(f"{name_of(dep)}: no NetworkPolicy lets traffic reach its http port")


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
                    r.error(f"{name_of(ing)}: path {p['path']} -> Service/{backend['name']}, which does not exist")
                elif port.get("name", port.get("number")) not in {
                        sp.get("name" if "name" in port else "port") for sp in svc["spec"].get("ports") or []}:
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


def cross_checks(overlay, objs):
    r = Render(overlay, objs)
    namespaces = {(o.get("metadata") or {}).get("namespace") for o in objs if o.get("kind") != "Namespace"}
    declared = {o["metadata"]["name"] for o in r.kind("Namespace")}
    if len(namespaces) != 1 or (declared and declared != namespaces):
        r.error(f"objects in namespaces {sorted(map(str, namespaces))} (the Namespace: {sorted(declared)}); "
                "the overlay's `namespace:` puts them in one")
    if r.pinned and r.kind("Secret"):
        r.error(f"{', '.join(name_of(s) for s in r.kind('Secret'))}: {overlay} holds no secret values "
                "(the operator creates the Secret)")
    scaled = check_autoscalers(r)
    check_workloads(r, scaled)
    check_services_and_pdbs(r)
    check_keda(r)
    check_monitoring(r)
    check_netpol(r)
    check_routing(r)
