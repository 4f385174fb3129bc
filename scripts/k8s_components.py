"""Checks of the components' objects in a rendered overlay (validate_k8s.py cross_checks):
KEDA (the code's queue, unacknowledged messages counted), monitoring (every pod scraped,
the alerts of docs/OPERATIONS.md, the dashboard) and NetworkPolicies."""

import ipaddress
import json
import os
import re

from deploy_lib import REPO, name_of, rel
from k8s_render import container_ports, pod_labels, pod_spec, selector_matches

QUEUE_RS = os.path.join(REPO, "shared-models", "src", "queue.rs")
# The alert table ("### What to alert on") lives in docs/OPERATIONS.md.
ALERTS_DOC = os.path.join(REPO, "docs", "OPERATIONS.md")

# The ranges the workers' internet egress must leave out (networkpolicies.yaml).
WORKER_EGRESS_EXCEPT = {
    "0.0.0.0/0": {
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "169.254.0.0/16",
        "127.0.0.0/8",
    },
    "::/0": {"fc00::/7", "fe80::/10"},
}


def check_keda(r):
    m = None
    try:
        with open(QUEUE_RS, encoding="utf-8") as f:
            m = re.search(r'jobs:\s*format!\("\{prefix\}([^"]*)"\)', f.read())
    except OSError:
        pass
    if m is None and r.kind("ScaledObject"):
        r.error(f'cannot find the jobs queue name (jobs: format!("{{prefix}}...")) in {rel(QUEUE_RS)}')
    for so in r.kind("ScaledObject"):
        for trig in so["spec"].get("triggers") or []:
            meta = trig.get("metadata") or {}
            if trig.get("type") == "rabbitmq":
                want = r.configmap.get("QUEUE_PREFIX", "thygon") + (m.group(1) if m else "")
                if m and meta.get("queueName") != want:
                    r.error(
                        f"{name_of(so)}: rabbitmq queueName {meta.get('queueName')!r} is not the jobs queue {want!r}"
                    )
                # Jobs the workers hold are work too: ready + unacknowledged, which only the
                # management API (protocol http) reports.
                if meta.get("protocol") != "http" or meta.get("excludeUnacknowledged") != "false":
                    r.error(
                        f"{name_of(so)}: the rabbitmq trigger must count unacknowledged messages: "
                        f'protocol: http and excludeUnacknowledged: "false" (it has protocol '
                        f"{meta.get('protocol')!r}, excludeUnacknowledged {meta.get('excludeUnacknowledged')!r})"
                    )
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
    """The Prometheus expressions of the "What to alert on" table of docs/OPERATIONS.md."""
    with open(ALERTS_DOC, encoding="utf-8") as f:
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
        scraped = [
            pm
            for pm in monitors
            if selector_matches(pm["spec"].get("selector"), pod_labels(dep))
            and any(
                e.get("port") == "metrics" and "metrics" in ports
                for e in pm["spec"].get("podMetricsEndpoints") or []
            )
        ]
        if not scraped:
            r.error(f"{name_of(dep)}: no PodMonitor scrapes its `metrics` port")
    exprs = {
        " ".join(str(rule.get("expr", "")).split())
        for pr in rules
        for g in pr["spec"].get("groups") or []
        for rule in g.get("rules") or []
    }
    for want in readme_alert_expressions():
        if " ".join(want.split()) not in exprs:
            r.error(f'docs/OPERATIONS.md "What to alert on": `{want}` is in no PrometheusRule of the render')
    for metric in ("thygon_pending_runs_requeued_total", "thygon_dead_letters_redriven_total"):
        if not any(metric in e for e in exprs):
            r.error(f"no alert on {metric}")
    dashboards = [
        cm
        for cm in r.kind("ConfigMap")
        if ((cm["metadata"].get("labels") or {}).get("grafana_dashboard")) == "1"
    ]
    if not dashboards:
        r.error('no Grafana dashboard (a ConfigMap labelled grafana_dashboard: "1")')
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
    if not any(
        set(p["spec"].get("policyTypes") or []) == {"Ingress", "Egress"}
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
        for p in every
    ):
        r.error(
            "NetworkPolicies without a default deny (podSelector {}, policyTypes Ingress and Egress, no rules)"
        )
    dns = {
        (port.get("protocol", "TCP"), port.get("port"))
        for p in every
        for rule in p["spec"].get("egress") or []
        for port in rule.get("ports") or []
    }
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
        for p in policies
        if selector_matches(p["spec"].get("podSelector"), pod_labels(worker))
        for rule in p["spec"].get("egress") or []
        for peer in rule.get("to") or []
    ):
        r.error("no NetworkPolicy lets the workers reach the internet (0.0.0.0/0 without the inside ranges)")
    for dep in r.deployments:
        c = (pod_spec(dep).get("containers") or [{}])[0]
        ingress = [
            rule
            for p in policies
            if selector_matches(p["spec"].get("podSelector"), pod_labels(dep))
            for rule in p["spec"].get("ingress") or []
        ]
        allowed = {port for rule in ingress for port in _allows_port(rule, c)}
        if r.kind("PodMonitor") and not allowed & {None, "metrics", container_ports(c).get("metrics")}:
            r.error(f"{name_of(dep)}: no NetworkPolicy lets Prometheus reach its metrics port")
        serves = any(selector_matches(s["spec"].get("selector"), pod_labels(dep)) for s in r.kind("Service"))
        if serves and not allowed & {None, "http", container_ports(c).get("http")}:
            r.error(f"{name_of(dep)}: no NetworkPolicy lets traffic reach its http port")
