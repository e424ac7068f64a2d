#!/usr/bin/env python3
"""Cross-file checks of the deployment files, run by .ci/lint-deploy.

The image cannot be built nor the manifests applied on the CI machine (no Docker engine, no
cluster), and each linter sees one file at a time. This script checks what holds *between* them:
the Dockerfile's user, ports, paths and health check against the build context and
.dockerignore, the rendered Kubernetes objects against the Dockerfile and against each other,
the ConfigMap's relay.toml against the relay's configuration keys, and the compose files against
the image.

    check_deploy.py REPO_ROOT RENDERED_BASE.yaml [OVERLAY_DIR RENDERED_OVERLAY.yaml]...

The base (deploy/kubernetes) must render one StatefulSet: one pod, its SQLite queue on a
claimed volume. An overlay (deploy/kubernetes/overlays/NAME) may render a Deployment instead:
several replicas on a database (RELAY_DATABASE_URL_FILE from a Secret), no claimed volume,
rolled out without taking a replica away first, guarded by a PodDisruptionBudget. Both share
the pod-level checks (user, probes, ports, resources, config, secrets as files).

Prints one line per finding and exits 1 if there is any.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path, PurePosixPath

import dockerfile  # the official BuildKit parser
import yaml

try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib

BINARY = "/usr/local/bin/prosperstack-relay"
# The relay's TOML configuration keys (the binary rejects unknown keys).
TOML_KEYS = {
    "": {"listen", "data_dir", "prosperstack", "trait_mappings", "store"},
    "prosperstack": {"api_url", "rate_limit_requests", "rate_limit_window_secs"},
    # database_url is a key too, but a secret: never in a ConfigMap (see check_toml).
    "store": {"leader_lease"},
}
DEFAULT_DRAIN_SECS = 20
FILE_SECRETS = ("PROSPERSTACK_API_KEY_FILE", "SEGMENT_SHARED_SECRET_FILE", "RELAY_INGEST_TOKEN_FILE",
                "RELAY_DATABASE_URL_FILE")
SECRET_EXAMPLE = "secret.example.yaml"

findings: list[str] = []


def check(ok: bool, where: str, message: str) -> bool:
    if not ok:
        findings.append(f"{where}: {message}")
    return ok


def port_of(addr: str) -> int:
    return int(addr.rsplit(":", 1)[1])


def seconds(value: str) -> float:
    """'20s', '1m30s', '500ms' or a bare number of seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    if re.fullmatch(r"\d+(\.\d+)?", value):
        return float(value)
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", value)
    if not parts or "".join(n + u for n, u in parts) != value.replace(" ", ""):
        raise ValueError(f"not a duration: {value!r}")
    return sum(float(n) * units[u] for n, u in parts)


# --- Dockerfile and build context ------------------------------------------------------------

def dockerignore_rules(root: Path) -> list[tuple[bool, re.Pattern]]:
    rules = []
    path = root / ".dockerignore"
    for line in path.read_text().splitlines() if path.exists() else []:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = str(PurePosixPath(line.lstrip("!").strip("/")))
        regex = ""
        for part in re.split(r"(\*\*/?|\*|\?)", pattern):
            regex += {"**/": "(.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(part, re.escape(part))
        rules.append((negate, re.compile(regex + "(/.*)?")))
    return rules


def ignored(rel: str, rules) -> bool:
    """Docker's rule: the last pattern that matches the path (or a parent of it) wins."""
    verdict = False
    for negate, regex in rules:
        if regex.fullmatch(rel):
            verdict = not negate
    return verdict


def check_dockerfile(root: Path) -> dict:
    where = "Dockerfile"
    cmds = dockerfile.parse_file(str(root / "Dockerfile"))
    stages: list[list] = []
    for c in cmds:
        if c.cmd == "FROM":
            stages.append([])
        stages[-1].append(c)
    final = stages[-1]
    rules = dockerignore_rules(root)

    for must in ("target", ".git", "data"):
        check(ignored(must, rules), ".dockerignore", f"must exclude {must}/")
    for needed in ("Cargo.toml", "Cargo.lock", "src/main.rs", "src/lib.rs",
                   "crates/prosperstack-sandbox/Cargo.toml", "crates/relay-bench/Cargo.toml"):
        check((root / needed).exists(), where, f"build needs {needed}, missing from the repository")
        check(not ignored(needed, rules), ".dockerignore", f"excludes {needed}, which the build needs")

    for c in cmds:
        if c.cmd in ("COPY", "ADD") and not any(f.startswith("--from") for f in c.flags):
            for src in c.value[:-1]:
                matches = [p for p in root.glob(src)] if src != "." else [root]
                check(bool(matches), f"{where}:{c.start_line}", f"COPY source {src!r} does not exist")
                for m in matches:
                    rel = m.relative_to(root).as_posix()
                    check(rel == "." or not ignored(rel, rules), f"{where}:{c.start_line}",
                          f"COPY source {src!r} is excluded by .dockerignore")
        if c.cmd == "RUN" and "cargo build" in c.value[0]:
            check("--release" in c.value[0] and "--locked" in c.value[0], f"{where}:{c.start_line}",
                  "cargo build must use --release --locked")

    info: dict = {"uid": None, "env": {}, "expose": set()}
    for c in final:
        if c.cmd == "USER":
            info["uid"] = c.value[0]
        elif c.cmd == "ENV":
            info["env"].update(dict(zip(c.value[0::2], c.value[1::2])))
        elif c.cmd == "EXPOSE":
            info["expose"].update(int(p.split("/")[0]) for p in c.value)
    uid = info["uid"] or ""
    if check(re.fullmatch(r"[1-9]\d*(:\d+)?", uid) is not None, where,
             f"final USER must be a numeric non-root uid[:gid], not {uid!r}"):
        info["uid"] = int(uid.split(":")[0])

    by_cmd = {c.cmd: c for c in final}
    copied = {c.value[-1]: c for c in final if c.cmd == "COPY"}
    for name in ("ENTRYPOINT", "HEALTHCHECK"):
        check(name in by_cmd and by_cmd[name].json, where, f"{name} must be in exec (JSON) form")
    entry = by_cmd.get("ENTRYPOINT")
    check(entry is not None and entry.value[0] == BINARY, where, f"ENTRYPOINT must run {BINARY}")
    check(BINARY in copied, where, f"the final stage never copies the binary to {BINARY}")
    if BINARY in copied:
        src = copied[BINARY].value[0]
        builder_runs = " ".join(c.value[0] for s in stages[:-1] for c in s if c.cmd == "RUN")
        check(src in builder_runs, where, f"no builder RUN step produces {src}")
    hc = by_cmd.get("HEALTHCHECK")
    check(hc is not None and list(hc.value) == ["CMD", BINARY, "healthcheck"], where,
          "HEALTHCHECK must be CMD [\"%s\", \"healthcheck\"]" % BINARY)
    check(by_cmd.get("CMD") is not None and list(by_cmd["CMD"].value) == ["serve"], where,
          'CMD must be ["serve"]')

    data_dir = info["env"].get("RELAY_DATA_DIR")
    check(data_dir == "/data", where, "ENV RELAY_DATA_DIR must be /data")
    volumes = {v for c in final if c.cmd == "VOLUME" for v in c.value}
    check(data_dir in volumes, where, f"VOLUME must declare the data dir {data_dir}")
    chowned = copied.get(data_dir)
    check(chowned is not None and f"--chown={uid}" in chowned.flags, where,
          f"the data dir {data_dir} must be copied in with --chown={uid} (owned by the USER)")
    listen = info["env"].get("RELAY_LISTEN", "0.0.0.0:8080")
    check(port_of(listen) in info["expose"], where, f"EXPOSE must include the RELAY_LISTEN port")
    return info


# --- Kubernetes ------------------------------------------------------------------------------

QUANTITY = re.compile(r"^\d+(\.\d+)?(m|k|Ki|Mi|Gi|Ti|M|G|T)?$")


def quantity(q) -> float:
    q = str(q)
    if not QUANTITY.match(q):
        raise ValueError(q)
    mult = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
            "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    m = re.match(r"^([\d.]+)(\D*)$", q)
    return float(m.group(1)) * mult.get(m.group(2), 1)


def check_toml(text: str, where: str, env: dict) -> None:
    try:
        cfg = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        check(False, where, f"relay.toml does not parse: {e}")
        return
    check("database_url" not in cfg.get("store", {}), where,
          "relay.toml [store] database_url holds a password: read it from a Secret "
          "(RELAY_DATABASE_URL_FILE), not a ConfigMap")
    for table, allowed in TOML_KEYS.items():
        section = cfg.get(table, {}) if table else cfg
        if table == "store":
            section = {k: v for k, v in section.items() if k != "database_url"}
        unknown = set(section) - allowed
        check(not unknown, where, f"relay.toml [{table or 'top level'}] unknown keys {sorted(unknown)}")
    check(all(isinstance(v, str) for v in cfg.get("trait_mappings", {}).values()), where,
          "relay.toml [trait_mappings] values must be strings (property keys)")
    for key, var in (("data_dir", "RELAY_DATA_DIR"), ("listen", "RELAY_LISTEN")):
        if key in cfg and var in env:
            check(cfg[key] == env[var], where, f"relay.toml {key} {cfg[key]!r} differs from {var}")


def secret_examples(root: Path, kustomization: Path) -> dict:
    """Secret name -> keys, from the base's secret.example.yaml and the kustomization's own."""
    examples = {}
    for path in dict.fromkeys((root / "deploy/kubernetes" / SECRET_EXAMPLE, kustomization / SECRET_EXAMPLE)):
        if path.exists():
            doc = yaml.safe_load(path.read_text())
            examples[doc["metadata"]["name"]] = set(doc.get("stringData", {})) | set(doc.get("data", {}))
    return examples


def check_kubernetes(root: Path, rendered: Path, image: dict, kustomization: Path) -> None:
    docs = [d for d in yaml.safe_load_all(rendered.read_text()) if d]
    objs = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    where = kustomization.relative_to(root).as_posix()
    check(not any(k == "Secret" for k, _ in objs), where,
          "the kustomization must not render a Secret (apply -k would overwrite the real one)")
    workloads = [d for d in docs if d["kind"] in ("StatefulSet", "Deployment")]
    if not check(len(workloads) == 1, where, "expected exactly one StatefulSet or Deployment"):
        return
    workload = workloads[0]
    where = f"{where}: {workload['kind']}/{workload['metadata']['name']}"
    pod = workload["spec"]["template"]["spec"]
    containers = pod["containers"]
    if not check(len(containers) == 1, where, "expected one container"):
        return
    c = containers[0]
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    full_env = {**image["env"], **{k: v for k, v in env.items() if v is not None}}
    mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    if workload["kind"] == "StatefulSet":
        check_single_pod(workload, objs, full_env, mounts, where)
    else:
        check_replicated(workload, objs, full_env, env, mounts, volumes, where)
    check_pod(workload, objs, image, c, full_env, where)
    check_files(env, full_env, mounts, volumes, objs, secret_examples(root, kustomization), where)


def check_single_pod(sts: dict, objs: dict, full_env: dict, mounts: dict, where: str) -> None:
    """The SQLite relay: one pod, its queue on a claimed volume."""
    spec = sts["spec"]
    check(spec.get("replicas") == 1, where, "replicas must be 1 (the queue is a locked local database)")
    svc = objs.get(("Service", spec.get("serviceName")))
    check(svc is not None and svc["spec"].get("clusterIP") == "None", where,
          "serviceName must name a headless Service of this kustomization")
    claims = {t["metadata"]["name"]: t for t in spec.get("volumeClaimTemplates", [])}
    data_dir = full_env.get("RELAY_DATA_DIR")
    m = mounts.get(data_dir)
    check(m is not None and m["name"] in claims, where,
          f"RELAY_DATA_DIR {data_dir} must be a volumeClaimTemplates mount")
    for claim in claims.values():
        check(claim["spec"].get("accessModes") == ["ReadWriteOnce"], where, "claim must be ReadWriteOnce")
        check("storage" in claim["spec"].get("resources", {}).get("requests", {}), where,
              "claim must request storage")


def check_replicated(deploy: dict, objs: dict, full_env: dict, env: dict, mounts: dict,
                     volumes: dict, where: str) -> None:
    """Replicas on a database: no claimed volume, rollouts that never take a replica away
    first, a PodDisruptionBudget that lets drains through one pod at a time."""
    spec = deploy["spec"]
    replicas = spec.get("replicas", 1)
    check(replicas >= 2, where, "replicas must be 2 or more (one pod is what the base is for)")
    check("RELAY_DATABASE_URL_FILE" in env, where,
          "RELAY_DATABASE_URL_FILE must name the database URL's Secret file (replicas share a database)")
    strategy = spec.get("strategy", {})
    unavailable = strategy.get("rollingUpdate", {}).get("maxUnavailable")
    check(strategy.get("type") == "RollingUpdate" and unavailable in (0, "0%"), where,
          "strategy must be RollingUpdate with maxUnavailable 0 (a broken release must not take a replica)")
    for name, vol in volumes.items():
        check("persistentVolumeClaim" not in vol, where,
              f"volume {name}: no claimed volume (the state is in the database)")
    data = mounts.get(full_env.get("RELAY_DATA_DIR"))
    if data is not None:
        check("emptyDir" in volumes.get(data["name"], {}), where,
              "RELAY_DATA_DIR may only be scratch (an emptyDir): nothing durable is kept there")
    labels = spec["template"]["metadata"].get("labels", {})
    budgets = [o for (k, _), o in objs.items() if k == "PodDisruptionBudget"
               and all(labels.get(k2) == v for k2, v in o["spec"].get("selector", {})
                       .get("matchLabels", {}).items())]
    if check(len(budgets) == 1, where, "exactly one PodDisruptionBudget must select the replicas"):
        pdb = budgets[0]["spec"]
        allows = pdb.get("maxUnavailable", 0) not in (0, "0%") or (
            isinstance(pdb.get("minAvailable"), int) and pdb["minAvailable"] < replicas)
        check(allows, where, "the PodDisruptionBudget must let one replica go at a time (drains)")


def check_pod(workload: dict, objs: dict, image: dict, c: dict, full_env: dict, where: str) -> None:
    """What every relay pod needs: drain time, a non-root read-only container, probes, ports,
    resources, Services and scraping that match."""
    pod = workload["spec"]["template"]["spec"]
    check(not c.get("command"), where, "do not override the image's ENTRYPOINT (use args)")
    mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
    drain = seconds(full_env.get("RELAY_DRAIN_DEADLINE", f"{DEFAULT_DRAIN_SECS}s"))
    grace = pod.get("terminationGracePeriodSeconds", 30)
    check(grace >= drain + 5, where, f"terminationGracePeriodSeconds {grace} must exceed the {drain:g}s drain by 5s+")

    psc, csc = pod.get("securityContext", {}), c.get("securityContext", {})
    uid = csc.get("runAsUser", psc.get("runAsUser"))
    check(psc.get("runAsNonRoot") is True or csc.get("runAsNonRoot") is True, where, "runAsNonRoot must be true")
    check(uid == image["uid"], where, f"runAsUser {uid} must equal the Dockerfile USER {image['uid']}")
    check(psc.get("fsGroup") is not None, where, "fsGroup must be set so the volume is writable")
    check(csc.get("readOnlyRootFilesystem") is True, where, "readOnlyRootFilesystem must be true")
    check(csc.get("allowPrivilegeEscalation") is False, where, "allowPrivilegeEscalation must be false")
    check("ALL" in csc.get("capabilities", {}).get("drop", []), where, "capabilities must drop ALL")
    check("/tmp" in mounts, where, "with a read-only root filesystem, mount a writable /tmp")

    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    listen = port_of(full_env.get("RELAY_LISTEN", "0.0.0.0:8080"))
    check(ports.get("http") == listen and listen in image["expose"], where,
          f"container port 'http' must be the RELAY_LISTEN port {listen}, as EXPOSEd")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = c.get(probe, {}).get("httpGet", {})
        check(get.get("path") == path and get.get("port") in ("http", listen), where,
              f"{probe} must GET {path} on the http port")

    res = c.get("resources", {})
    for kind in ("cpu", "memory"):
        try:
            req, lim = quantity(res["requests"][kind]), quantity(res["limits"][kind])
            check(req <= lim, where, f"{kind} request exceeds its limit")
        except (KeyError, ValueError) as e:
            check(False, where, f"resources.requests/limits.{kind} missing or malformed ({e})")

    labels = workload["spec"]["template"]["metadata"].get("labels", {})
    for (kind, name), obj in objs.items():
        if kind != "Service":
            continue
        sel = obj["spec"].get("selector", {})
        check(sel and all(labels.get(k) == v for k, v in sel.items()), f"Service/{name}",
              "selector does not match the pod's labels")
        for p in obj["spec"]["ports"]:
            target = p.get("targetPort", p["port"])
            check(target in ports or target in ports.values(), f"Service/{name}",
                  f"targetPort {target!r} is no container port")

    ann = workload["spec"]["template"]["metadata"].get("annotations", {})
    if ann.get("prometheus.io/scrape") == "true":
        metrics = full_env.get("RELAY_METRICS_LISTEN")
        mport = port_of(metrics) if metrics else listen
        check(ann.get("prometheus.io/port") == str(mport) and mport in ports.values(), where,
              f"prometheus.io/port must be the metrics port {mport}, declared as a containerPort")


def check_files(env: dict, full_env: dict, mounts: dict, volumes: dict, objs: dict,
                examples: dict, where: str) -> None:
    """RELAY_CONFIG is a mounted ConfigMap's valid relay.toml; each *_FILE secret is a key of a
    mounted Secret shown in a secret.example.yaml, and never also a plain env value."""
    def mounted_volume(path: str):
        for mp, mnt in mounts.items():
            if path.startswith(mp.rstrip("/") + "/"):
                return volumes.get(mnt["name"]), path[len(mp.rstrip("/")) + 1:]
        return None, None

    config_path = env.get("RELAY_CONFIG")
    if check(config_path is not None, where, "RELAY_CONFIG must point at the ConfigMap's relay.toml"):
        vol, key = mounted_volume(config_path)
        cm = objs.get(("ConfigMap", (vol or {}).get("configMap", {}).get("name")))
        if check(cm is not None and key in cm.get("data", {}), where,
                 f"RELAY_CONFIG {config_path} is not a key of a mounted ConfigMap of this kustomization"):
            check_toml(cm["data"][key], f"ConfigMap/{cm['metadata']['name']}", full_env)

    for var in FILE_SECRETS:
        if var not in env:
            continue
        vol, key = mounted_volume(env[var])
        name = (vol or {}).get("secret", {}).get("secretName")
        check(name in examples and key in examples[name], where,
              f"{var} must point at a key of a mounted Secret shown in a {SECRET_EXAMPLE}")
        check(var.removesuffix("_FILE") not in env, where, f"{var.removesuffix('_FILE')} must not be a plain env value")


# --- Compose ---------------------------------------------------------------------------------

def check_compose(root: Path, image: dict) -> None:
    path = root / "deploy/compose.yaml"
    where = "deploy/compose.yaml"
    doc = yaml.safe_load(path.read_text())
    services = doc.get("services", {})
    if not check({"sandbox", "relay"} <= set(services), where, "services sandbox and relay expected"):
        return
    for name, svc in services.items():
        build = svc.get("build")
        check(build is not None or svc.get("image"), where, f"{name}: needs build or image")
        if isinstance(build, dict):
            ctx = (path.parent / build.get("context", ".")).resolve()
            check(ctx == root.resolve() and (ctx / build.get("dockerfile", "Dockerfile")).exists(),
                  where, f"{name}: build context must be the repository root, with its Dockerfile")
    sandbox, relay = services["sandbox"], services["relay"]
    cmd = sandbox.get("command", [])
    check(cmd[:2] == ["sandbox", "--listen"], where, "sandbox: command must be sandbox --listen ADDR")
    env = relay.get("environment", {})
    if isinstance(env, list):
        env = dict(e.split("=", 1) for e in env)
    if len(cmd) >= 3:
        want = f"http://sandbox:{port_of(cmd[2])}"
        check(env.get("PROSPERSTACK_API_URL") == want, where, f"relay: PROSPERSTACK_API_URL must be {want}")
    check(env.get("PROSPERSTACK_API_KEY") == "key_test_sandbox", where, "relay: API key must be key_test_sandbox")
    data_dir = env.get("RELAY_DATA_DIR", image["env"].get("RELAY_DATA_DIR"))
    named = set(doc.get("volumes") or {})
    check(any(isinstance(v, str) and v.split(":")[0] in named and v.split(":")[1] == data_dir
              for v in relay.get("volumes", [])), where, f"relay: a named volume must be mounted at {data_dir}")
    listen = port_of(env.get("RELAY_LISTEN", image["env"].get("RELAY_LISTEN", "0.0.0.0:8080")))
    check(any(str(p).endswith(f":{listen}") for p in relay.get("ports", [])), where,
          f"relay: port {listen} must be published")
    grace = seconds(str(relay.get("stop_grace_period", "10s")))
    check(grace > DEFAULT_DRAIN_SECS, where, f"relay: stop_grace_period must exceed the {DEFAULT_DRAIN_SECS}s drain")


def check_compose_postgres(root: Path, image: dict) -> None:
    """compose.postgres.yaml: two or more relays (services running `serve`) sharing the
    PostgreSQL service of the file, none of them with a volume of its own for the queue."""
    path = root / "deploy/compose.postgres.yaml"
    where = "deploy/compose.postgres.yaml"
    if not path.exists():
        return
    doc = yaml.safe_load(path.read_text())
    services = doc.get("services", {})
    relays = {n: s for n, s in services.items() if s.get("command") == ["serve"]}
    databases = {n for n, s in services.items() if str(s.get("image", "")).startswith("postgres:")}
    check(len(relays) >= 2, where, "two or more relay services (command [serve]) expected")
    if not check(len(databases) == 1, where, "one PostgreSQL service (image postgres:…) expected"):
        return
    database = databases.pop()
    check("healthcheck" in services[database], where, f"{database}: needs a healthcheck (relays wait for it)")
    data_dir = image["env"].get("RELAY_DATA_DIR")
    published = []
    for name, svc in relays.items():
        env = svc.get("environment", {})
        if isinstance(env, list):
            env = dict(e.split("=", 1) for e in env)
        url = env.get("RELAY_DATABASE_URL", "")
        host = re.sub(r"^postgres(ql)?://([^@/]*@)?", "", url).split(":")[0].split("/")[0]
        check("RELAY_DATABASE_URL_FILE" in env or host == database, where,
              f"{name}: RELAY_DATABASE_URL must name the {database} service (or use RELAY_DATABASE_URL_FILE)")
        depends = svc.get("depends_on", {})
        check(isinstance(depends, dict) and depends.get(database, {}).get("condition") == "service_healthy",
              where, f"{name}: must depend on {database} with condition service_healthy")
        data = env.get("RELAY_DATA_DIR", data_dir)
        check(not any(isinstance(v, str) and v.split(":")[1:2] == [data] for v in svc.get("volumes", [])),
              where, f"{name}: no volume at {data}: the queue is in the database")
        grace = seconds(str(svc.get("stop_grace_period", "10s")))
        check(grace > DEFAULT_DRAIN_SECS, where, f"{name}: stop_grace_period must exceed the {DEFAULT_DRAIN_SECS}s drain")
        published += [str(p).rsplit(":", 1)[0] for p in svc.get("ports", [])]
    check(len(published) == len(set(published)), where, "relays must publish distinct host ports")


def main() -> int:
    root, rendered = Path(sys.argv[1]).resolve(), Path(sys.argv[2])
    overlays = list(zip(sys.argv[3::2], sys.argv[4::2]))
    image = check_dockerfile(root)
    if image["uid"] is not None:
        check_kubernetes(root, rendered, image, root / "deploy/kubernetes")
        for directory, overlay in overlays:
            check_kubernetes(root, Path(overlay), image, (root / directory).resolve())
        check_compose(root, image)
        check_compose_postgres(root, image)
    for f in findings:
        print(f"  finding: {f}")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
