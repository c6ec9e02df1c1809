"""Offline checks of everything under deploy/ and of compose.yaml; scripts/test runs this.

It runs in the venv scripts/test makes under target/ (kubernetes-validate and check-jsonschema,
pinned there). Nothing here needs a cluster, a Docker engine or the network:

- every Kubernetes manifest in deploy/kubernetes/ against the Kubernetes JSON schemas that
  kubernetes-validate ships, strictly (unknown fields are errors), for the oldest and newest
  Kubernetes versions in VERSIONS; a kind without a schema is an error, not a warning;
- the KEDA ScaledObject against deploy/kubernetes/schemas/keda-scaledobject.json;
- kustomization.yaml names every manifest in the directory and nothing else (the
  *.template.yaml files are documentation, not resources); and, when kubectl is installed,
  `kubectl kustomize` builds the base and every object it renders passes the same checks;
- compose.yaml against the compose-spec schema that check-jsonschema vendors;
- deploy/prometheus/prometheus.yml scrapes the ports the manifests and compose.yaml use;
- deploy/grafana/runfleet.json is a dashboard whose queries use only runfleet's metrics
  (METRICS), and uses each of DASHBOARD_METRICS;
- docs/operations.md: its ```yaml examples that are Kubernetes objects pass the checks above,
  and its metric table lists exactly METRICS.

Every problem is printed; the exit status is 1 if there was any.
"""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "kubernetes"
KEDA_SCHEMA = K8S / "schemas" / "keda-scaledobject.json"
DASHBOARD = ROOT / "deploy" / "grafana" / "runfleet.json"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
COMPOSE = ROOT / "compose.yaml"
OPERATIONS = ROOT / "docs" / "operations.md"

# The oldest Kubernetes still commonly run, and the newest kubernetes-validate knows.
VERSIONS = ["1.29.0", "1.37.0"]

# The metrics the dashboard must show, each of them.
DASHBOARD_METRICS = {
    "runfleet_queue_ready_jobs",
    "runfleet_queue_processing_jobs",
    "runfleet_runners",
    "runfleet_nodes_alive",
    "runfleet_node_capacity_slots",
    "runfleet_node_runners",
    "runfleet_nodes_needed",
    "runfleet_admissions_total",
    "runfleet_start_to_running_seconds",
    "runfleet_restarts_total",
    "runfleet_breaker_openings_total",
    "runfleet_sweep_duration_seconds",
    "runfleet_expired_leases_total",
}
# Every metric the orchestrators and worker nodes export: the constants of
# shared/src/observability.rs, the one place metric names are written (docs/operations.md
# must list each).
OBSERVABILITY = ROOT / "shared" / "src" / "observability.rs"
METRICS = set(re.findall(r'pub const [A-Z_]+: &str = "(runfleet_[a-z_]+)";', OBSERVABILITY.read_text()))
# The series a histogram is exported as.
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
# Panels the issue asks for, by a word their title must contain.
PANELS = ["queue depth", "start latency", "runners by status", "restarts", "nodes"]

problems = []


def problem(where, what):
    problems.append(f"{where}: {what}")


def rel(path):
    return path.relative_to(ROOT)


def load_yaml_docs(path):
    try:
        return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except yaml.YAMLError as e:
        problem(rel(path), f"not YAML: {e}")
        return []


def check_object(where, obj, keda_schema):
    kind = obj.get("kind")
    name = (obj.get("metadata") or {}).get("name", "?")
    label = f"{where} {kind}/{name}"
    if kind == "ScaledObject":
        for err in jsonschema.Draft202012Validator(keda_schema).iter_errors(obj):
            path = "/".join(str(p) for p in err.absolute_path) or "(top)"
            problem(label, f"{path}: {err.message}")
        return
    for version in VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            problem(label, f"no Kubernetes {version} schema for {obj.get('apiVersion')} {kind}")
        except kubernetes_validate.ValidationError as e:
            path = "/".join(str(p) for p in e.path) or "(top)"
            problem(label, f"Kubernetes {version}: {path}: {e.message}")
        except Exception as e:  # noqa: BLE001 - any other failure is a problem too, named
            problem(label, f"Kubernetes {version}: {e}")


def check_kubernetes(keda_schema):
    kustomization = K8S / "kustomization.yaml"
    manifests = sorted(
        p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml"
    )
    counted = 0
    for path in manifests:
        for obj in load_yaml_docs(path):
            check_object(rel(path), obj, keda_schema)
            counted += 1
    listed = (load_yaml_docs(kustomization) or [{}])[0].get("resources") or []
    applied = {p.name for p in manifests if not p.name.endswith(".template.yaml")}
    for name in sorted(applied - set(listed)):
        problem(rel(kustomization), f"does not list {name} under resources")
    for name in sorted(set(listed) - applied):
        problem(rel(kustomization), f"lists {name}, which is not a manifest in {rel(K8S)}")
    check_grace_periods(manifests)
    print(f"check_deploy: {counted} objects in {len(manifests)} files of {rel(K8S)}; "
          f"kustomization lists {len(listed)} files")

    kubectl = shutil.which("kubectl")
    if kubectl is None:
        print("check_deploy: kubectl not installed; `kubectl kustomize` skipped "
              "(the list check above still covers the kustomization)")
        return
    built = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True)
    if built.returncode != 0:
        problem("kubectl kustomize", built.stderr.strip())
        return
    rendered = [d for d in yaml.safe_load_all(built.stdout) if d is not None]
    for obj in rendered:
        check_object("kustomize output", obj, keda_schema)
    namespaces = {(o.get("metadata") or {}).get("namespace") for o in rendered if o["kind"] != "Namespace"}
    if namespaces != {"runfleet"}:
        problem("kustomize output", f"objects outside the runfleet namespace: {namespaces}")
    print(f"check_deploy: kubectl kustomize rendered {len(rendered)} objects")


def check_grace_periods(manifests):
    """A pod killed before its shutdown deadline turns a worker node's hand-back into crashes:
    every Deployment's terminationGracePeriodSeconds must exceed shutdown.deadline_ms."""
    objects = [o for p in manifests for o in load_yaml_docs(p)]
    deadline_ms = None
    for o in objects:
        if o.get("kind") == "ConfigMap":
            value = (o.get("data") or {}).get("RUNFLEET__SHUTDOWN__DEADLINE_MS")
            if value is not None:
                deadline_ms = int(value)
    if deadline_ms is None:
        deadline_ms = 10_000  # the built-in default (shared/src/config.rs)
    for o in objects:
        if o.get("kind") != "Deployment":
            continue
        spec = o["spec"]["template"]["spec"]
        grace_s = spec.get("terminationGracePeriodSeconds", 30)
        if grace_s * 1000 <= deadline_ms:
            problem(f"Deployment/{o['metadata']['name']}",
                    f"terminationGracePeriodSeconds {grace_s} s does not exceed the shutdown "
                    f"deadline of {deadline_ms} ms")


def check_compose():
    checker = Path(sys.executable).parent / "check-jsonschema"
    run = subprocess.run(
        [str(checker), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True, text=True,
    )
    if run.returncode != 0:
        problem(rel(COMPOSE), "does not match the compose-spec schema:\n" + run.stdout + run.stderr)
    compose = (load_yaml_docs(COMPOSE) or [{}])[0]
    worker = (compose.get("services") or {}).get("worker-node") or {}
    for fixed in ("container_name", "ports"):
        if fixed in worker:
            problem(rel(COMPOSE), f"worker-node has {fixed}: `--scale worker-node=N` needs none")
    for service in ("prometheus", "grafana"):
        profiles = ((compose.get("services") or {}).get(service) or {}).get("profiles")
        if profiles != ["monitoring"]:
            problem(rel(COMPOSE), f"{service} must be in the monitoring profile (has {profiles})")
    for volume in ((compose.get("services") or {}).get("grafana") or {}).get("volumes", []):
        source = volume.split(":")[0]
        if source.startswith("./") and not (ROOT / source).exists():
            problem(rel(COMPOSE), f"grafana mounts {source}, which does not exist")


def check_prometheus():
    config = (load_yaml_docs(PROMETHEUS) or [{}])[0]
    targets = json.dumps(config.get("scrape_configs", []))
    for needed in ("orchestrator-a:8080", "orchestrator-b:8080", '"worker-node"', "9100"):
        if needed not in targets:
            problem(rel(PROMETHEUS), f"scrapes nothing at {needed}")


PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
    "and", "or", "unless", "offset", "inf", "nan",
}


def metric_names(expr):
    """The metric names a PromQL expression selects: its identifiers once strings, label
    matchers, grouping clauses, ranges, Grafana variables and function calls are taken out."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\$\w+|\$\{[^}]*\}", "", expr)
    names = []
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        rest = expr[m.end():].lstrip()
        if rest.startswith("(") or m.group(0) in PROMQL_WORDS:
            continue
        if m.start() > 0 and (expr[m.start() - 1].isdigit() or expr[m.start() - 1] == "."):
            continue  # the exponent or unit of a number, such as 1e3
        names.append(m.group(0))
    return names


def dashboard_exprs(node):
    """Every `expr` in the dashboard, with where it is."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "expr" and isinstance(value, str):
                yield node.get("refId", "?"), value
            else:
                yield from dashboard_exprs(value)
    elif isinstance(node, list):
        for item in node:
            yield from dashboard_exprs(item)


def check_dashboard():
    try:
        dash = json.loads(DASHBOARD.read_text())
    except json.JSONDecodeError as e:
        problem(rel(DASHBOARD), f"not JSON: {e}")
        return
    panels = [p for p in dash.get("panels", []) if p.get("type") != "row"]
    used = set()
    for panel in panels:
        title = panel.get("title", "?")
        exprs = list(dashboard_exprs(panel))
        if not exprs:
            problem(rel(DASHBOARD), f"panel {title!r} has no query")
        for _, expr in exprs:
            for name in metric_names(expr):
                base = name
                for suffix in HISTOGRAM_SUFFIXES:
                    if base.endswith(suffix) and base[: -len(suffix)] in METRICS:
                        base = base[: -len(suffix)]
                if base not in METRICS:
                    problem(rel(DASHBOARD), f"panel {title!r} queries {name}, not a runfleet metric")
                used.add(base)
            if "histogram_quantile" in expr and "_bucket" not in expr:
                problem(rel(DASHBOARD), f"panel {title!r}: histogram_quantile over a non-bucket series")
    for name in sorted(DASHBOARD_METRICS - used):
        problem(rel(DASHBOARD), f"no panel shows {name}")
    titles = " | ".join(p.get("title", "").lower() for p in panels)
    for want in PANELS:
        if want not in titles:
            problem(rel(DASHBOARD), f"no panel about {want}")
    print(f"check_deploy: dashboard has {len(panels)} panels over {len(used)} metrics")


def check_operations_doc(keda_schema):
    text = OPERATIONS.read_text()
    examples = 0
    for block in re.findall(r"```yaml\n(.*?)```", text, re.S):
        for obj in yaml.safe_load_all(block):
            if isinstance(obj, dict) and "kind" in obj and "apiVersion" in obj:
                check_object(f"{rel(OPERATIONS)} example", obj, keda_schema)
                examples += 1
    for name in sorted(DASHBOARD_METRICS - METRICS):
        problem(rel(OBSERVABILITY), f"{name} is on the dashboard but not exported")
    documented = set(re.findall(r"^\| `(runfleet_[a-z_]+)", text, re.M))
    for name in sorted(METRICS - documented):
        problem(rel(OPERATIONS), f"the metric table lacks {name}")
    for name in sorted(documented - METRICS):
        problem(rel(OPERATIONS), f"the metric table lists {name}, which {rel(OBSERVABILITY)} does not export")
    print(f"check_deploy: {examples} Kubernetes examples in {rel(OPERATIONS)}")


def main():
    keda_schema = json.loads(KEDA_SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(keda_schema)
    check_kubernetes(keda_schema)
    check_compose()
    check_prometheus()
    check_dashboard()
    check_operations_doc(keda_schema)
    if problems:
        print(f"check_deploy: {len(problems)} problem(s):", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        return 1
    print("check_deploy: deploy/ and compose.yaml are valid")
    return 0


if __name__ == "__main__":
    sys.exit(main())
