"""The routing of the one base URL through an Ingress or an HTTPRoute, checked against the
gateway's (deploy/nginx/thygon.conf.template, docs/API.md "One base URL, two services").

A table of requests and the service each must reach; every Ingress host and every HTTPRoute
of a render is asked where each request goes:
- Ingress, as the Kubernetes API defines Prefix and Exact (whole path segments, Exact
  first, then the longest prefix); when an Ingress of the host sets ingress-nginx's
  `use-regex`, as ingress-nginx does then: every path of the host is a case-insensitive
  regex anchored at the start, tried longest first;
- HTTPRoute, by the Gateway API's precedence: an Exact path, then the longest PathPrefix,
  then a method match before none, then the order of the rules. A RegularExpression path is
  refused: its precedence is left to each implementation.
"""

import re

from deploy_lib import name_of, problem

RUNTIME, WORKFLOW = "runtime-service", "workflow-service"
# No route of either service: any Thygon service may answer (its JSON 404 or 405), as long
# as one does.
NOWHERE = "either service (no such route)"

# (method, path, where it must go). Keep in step with the gateway's routing.
ROUTES = [
    ("GET", "/workflows/runs", RUNTIME),
    ("POST", "/workflows/runs", RUNTIME),
    ("GET", "/workflows/runs/", RUNTIME),
    ("GET", "/workflows/runs/run_01H", RUNTIME),
    ("GET", "/workflows/runs/run_01H/events", RUNTIME),
    ("POST", "/workflows/runs/run_01H/cancel", RUNTIME),
    ("POST", "/workflows/runs/run_01H/steps/approve_it/approve", RUNTIME),
    ("POST", "/workflows/wf_support/trigger", RUNTIME),
    ("POST", "/workflows/wf_support/trigger/", RUNTIME),
    ("GET", "/usage", RUNTIME),
    ("GET", "/ops/queues", RUNTIME),
    ("GET", "/ops/workers", RUNTIME),
    ("GET", "/ops", RUNTIME),
    ("GET", "/ui", RUNTIME),
    ("GET", "/ui/", RUNTIME),
    ("GET", "/ui/index.html", RUNTIME),
    ("GET", "/workflows", WORKFLOW),
    ("POST", "/workflows", WORKFLOW),
    ("GET", "/workflows/", WORKFLOW),
    ("GET", "/workflows/wf_support", WORKFLOW),
    ("PUT", "/workflows/wf_support", WORKFLOW),
    ("DELETE", "/workflows/wf_support", WORKFLOW),
    ("GET", "/workflows/wf_support/versions", WORKFLOW),
    ("GET", "/workflows/wf_support/versions/2", WORKFLOW),
    ("POST", "/workflows/validate", WORKFLOW),
    ("POST", "/admin/orgs", WORKFLOW),
    ("DELETE", "/admin/keys/key_1", WORKFLOW),
    ("GET", "/openapi.json", WORKFLOW),
    ("GET", "/docs/", WORKFLOW),
    ("GET", "/healthz", WORKFLOW),
    ("GET", "/readyz", WORKFLOW),
    ("GET", "/no-such-route", WORKFLOW),
    # /metrics is on the `metrics` port only; here it reaches workflow-service's API port,
    # which does not serve it (METRICS_ADDR is set; k8s_render.py checks that).
    ("GET", "/metrics", WORKFLOW),
    ("GET", "/workflows/runsX", NOWHERE),
    ("GET", "/opsx", NOWHERE),
    ("GET", "/usagex", NOWHERE),
    ("POST", "/workflows/wf_support", NOWHERE),
    ("POST", "/workflows/", NOWHERE),
]

NGINX_REGEX = "nginx.ingress.kubernetes.io/use-regex"


def _prefix_matches(prefix, path):
    """Kubernetes Ingress Prefix and Gateway API PathPrefix: whole path segments."""
    p = prefix.rstrip("/")
    return p == "" or path == p or path.startswith(p + "/")


# ---- Ingress ------------------------------------------------------------------------------


def _ingress_paths(ingresses):
    """{host: [(ingress, path object)]}, and the hosts where an Ingress sets use-regex."""
    hosts, regex_hosts = {}, set()
    for ing in ingresses:
        regex = str(((ing.get("metadata") or {}).get("annotations") or {}).get(NGINX_REGEX)) == "true"
        for rule in (ing.get("spec") or {}).get("rules") or []:
            host = rule.get("host") or "*"
            if regex:
                regex_hosts.add(host)
            for p in ((rule.get("http") or {}).get("paths")) or []:
                hosts.setdefault(host, []).append((ing, p))
    return hosts, regex_hosts


def _ingress_target(paths, url, regex):
    exact = [p for _, p in paths if p.get("pathType") == "Exact" and p.get("path") == url]
    if exact:
        return exact[0]["backend"]["service"]["name"]
    ordered = sorted(
        (p for _, p in paths if p.get("pathType") != "Exact"), key=lambda p: -len(p.get("path", ""))
    )
    for p in ordered:
        if regex:
            try:
                hit = re.match("^" + p.get("path", ""), url, re.IGNORECASE)
            except re.error as e:
                return f"(invalid regex {p.get('path')!r}: {e})"
        else:
            # Without a controller's regex reading, ImplementationSpecific is taken as Prefix.
            hit = _prefix_matches(p.get("path", ""), url)
        if hit:
            return p["backend"]["service"]["name"]
    return None


def check_ingresses(ingresses, where):
    hosts, regex_hosts = _ingress_paths(ingresses)
    for host, paths in hosts.items():
        for ing, p in paths:
            if p.get("path", "").rstrip("/") == "/metrics":
                problem(
                    where, f"{name_of(ing)}: routes {p['path']}; /metrics must stay on the pods' metrics port"
                )
            if p.get("pathType") == "ImplementationSpecific" and host not in regex_hosts:
                problem(
                    where,
                    f"{name_of(ing)}: path {p.get('path')} is ImplementationSpecific: its meaning "
                    "is the controller's; use Prefix or Exact",
                )
        regex = host in regex_hosts
        reading = "ingress-nginx use-regex" if regex else "Prefix/Exact"
        for method, url, want in ROUTES:
            got = _ingress_target(paths, url, regex)
            if got is None or (got != want and want != NOWHERE):
                problem(
                    where,
                    f"Ingress host {host} ({reading}): {method} {url} goes to {got}, should go to {want}",
                )


# ---- HTTPRoute ----------------------------------------------------------------------------


def _route_target(route, method, url):
    best = None
    for index, rule in enumerate((route.get("spec") or {}).get("rules") or []):
        backends = rule.get("backendRefs") or []
        for m in rule.get("matches") or [{}]:
            path = m.get("path") or {"type": "PathPrefix", "value": "/"}
            ptype, value = path.get("type", "PathPrefix"), path.get("value", "/")
            if ptype == "Exact":
                if url != value:
                    continue
                path_rank = (2, len(value))
            elif ptype == "PathPrefix":
                if not _prefix_matches(value, url):
                    continue
                path_rank = (1, len(value))
            else:
                continue
            if m.get("method") and m["method"] != method:
                continue
            if m.get("headers") or m.get("queryParams"):
                continue  # the table's requests carry none
            rank = (path_rank, 1 if m.get("method") else 0, -index)
            if best is None or rank > best[0]:
                best = (rank, backends[0]["name"] if backends else None)
    return best[1] if best else None


def check_httproutes(routes, where):
    for route in routes:
        for rule in (route.get("spec") or {}).get("rules") or []:
            for m in rule.get("matches") or []:
                path = m.get("path") or {}
                if path.get("type") == "RegularExpression":
                    problem(
                        where,
                        f"{name_of(route)}: a RegularExpression path ({path.get('value')}): its "
                        "precedence over the other paths is each implementation's own",
                    )
                if str(path.get("value", "")).rstrip("/") == "/metrics":
                    problem(
                        where, f"{name_of(route)}: routes /metrics; it must stay on the pods' metrics port"
                    )
            if len(rule.get("backendRefs") or []) > 1:
                problem(
                    where, f"{name_of(route)}: a rule with several backendRefs splits traffic between them"
                )
        for method, url, want in ROUTES:
            got = _route_target(route, method, url)
            if got is None or (got != want and want != NOWHERE):
                problem(where, f"{name_of(route)}: {method} {url} goes to {got}, should go to {want}")
