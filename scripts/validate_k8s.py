"""Checks of k8s/ (scripts/validate_deploy.py k8s; docs/DEPLOY.md "Validation" and "Files").

- The tree, with or without kubectl: every kustomization's resources, components, patches and
  generator files exist, and every file of its directory is one of them; every component and
  the base are used; every YAML object against its schema (Kubernetes kinds with
  kubernetes-validate, strict; the CRDs with the hand-written k8s/schemas/); patch files
  are well formed; the schemas are valid JSON Schemas.
- Each overlay as `kubectl kustomize` renders it: the schemas again, then the objects against
  each other and against the code (cross_checks: k8s_render.py, k8s_components.py,
  k8s_routing.py).
"""

import json
import os
import re

import jsonschema

import k8s_components
import k8s_render
from deploy_lib import REPO, load_docs, name_of, problem, rel

SCHEMA_DIR = os.path.join(REPO, "k8s", "schemas")
KUSTOMIZE_KINDS = {"Kustomization", "Component"}
DEPRECATED_FIELDS = {"bases", "patchesStrategicMerge", "patchesJson6902", "commonLabels", "vars"}


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
        return [
            f"{'.'.join(str(p) for p in e.absolute_path) or '(top)'}: {e.message} [{rel(path)}]"
            for e in sorted(validator.iter_errors(obj), key=lambda e: list(e.path))
        ]

    import kubernetes_validate  # noqa: PLC0415 (slow to import; only the k8s checks need it)

    out = []
    for version in versions:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            where = ".".join(str(p) for p in e.path) or "(top)"
            out.append(f"{where}: {e.message} [Kubernetes {e.version}, strict]")
        except kubernetes_validate.SchemaNotFoundError:
            out.append(
                f"no Kubernetes {version} schema for {api} {kind}, and no {rel(path)} (a typo, "
                "or a CRD without a schema in k8s/schemas/)"
            )
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
                if (
                    not isinstance(op, dict)
                    or op.get("op") not in {"add", "remove", "replace", "move", "copy", "test"}
                    or "path" not in op
                ):
                    problem(rel(path), f"not a JSON patch operation: {op!r}")
        elif (
            not isinstance(doc, dict)
            or not doc.get("apiVersion")
            or not doc.get("kind")
            or not (doc.get("metadata") or {}).get("name")
        ):
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
                    problem(
                        where, f"resource {entry} is not a kustomization (a Component goes in components)"
                    )
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
        validator = (
            _crd_validator(f"{m[1]}/{m[2]}", m[3])[1] if m else "not named <group>_<version>_<kind>.json"
        )
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


def cross_checks(overlay, objs):
    r = k8s_render.Render(overlay, objs)
    namespaces = {(o.get("metadata") or {}).get("namespace") for o in objs if o.get("kind") != "Namespace"}
    declared = {o["metadata"]["name"] for o in r.kind("Namespace")}
    if len(namespaces) != 1 or (declared and declared != namespaces):
        r.error(
            f"objects in namespaces {sorted(map(str, namespaces))} (the Namespace: {sorted(declared)}); "
            "the overlay's `namespace:` puts them in one"
        )
    if r.pinned and r.kind("Secret"):
        r.error(
            f"{', '.join(name_of(s) for s in r.kind('Secret'))}: {overlay} holds no secret values "
            "(the operator creates the Secret)"
        )
    scaled = k8s_render.check_autoscalers(r)
    k8s_render.check_workloads(r, scaled)
    k8s_render.check_connection_budget(r)
    k8s_render.check_services_and_pdbs(r)
    k8s_components.check_keda(r)
    k8s_components.check_monitoring(r)
    k8s_components.check_netpol(r)
    k8s_render.check_routing(r)
