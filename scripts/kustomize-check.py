"""What a rendered Kustomize overlay deploys is the sidecar it means to deploy.

kubernetes-validate says the rendered manifests are valid Kubernetes; this says they are
the deployment deploy/README.md describes, on the rendered output (after Kustomize's
name suffixes, patches and generators), and runs the sidecar's configuration exactly as
the pod gets it, file and environment, through the binary's `serve --check-config`:

- the sidecar is a native sidecar (an init container with restartPolicy Always), probed
  on its admin port, with the security context and a memory limit;
- every ConfigMap the pod names is rendered, or is one of the two the security team's
  pipeline makes (policies, entities);
- the configuration's listeners are the ports the pod declares, the Service targets the
  sidecar's data plane, and the NetworkPolicy admits no port of the app;
- every container is non-root, read-only, without capabilities or privilege escalation.

Usage: kustomize-check.py RENDERED.yaml BINARY   (scripts/deploy-check.sh runs it)
"""

import os
import pathlib
import subprocess
import sys
import tempfile
import tomllib

import yaml

SIDECAR = "authz-sidecar"
# made from the repository's policies/ and entities/, not by Kustomize (deploy/README.md)
FROM_THE_POLICY_PIPELINE = {"authz-sidecar-policies", "authz-sidecar-entities"}

rendered_path, binary = sys.argv[1], sys.argv[2]
documents = [d for d in yaml.safe_load_all(pathlib.Path(rendered_path).read_text()) if d]
problems = []


def expect(ok, what):
    if not ok:
        problems.append(what)


def one(kind):
    found = [d for d in documents if d["kind"] == kind]
    expect(len(found) == 1, f"expected one {kind}, rendered {len(found)}")
    return found[0] if found else {}


config_maps = {d["metadata"]["name"]: d for d in documents if d["kind"] == "ConfigMap"}
deployment = one("Deployment")
pod = deployment.get("spec", {}).get("template", {}).get("spec", {})
sidecars = [c for c in pod.get("initContainers", []) if c["name"] == SIDECAR]
expect(len(sidecars) == 1, f"no init container named {SIDECAR}")
sidecar = sidecars[0] if sidecars else {}
expect(sidecar.get("restartPolicy") == "Always", "the sidecar is not a native sidecar (restartPolicy Always)")
ports = {p["name"]: p["containerPort"] for p in sidecar.get("ports", [])}
for probe, path in [("startupProbe", "/readyz"), ("readinessProbe", "/readyz"), ("livenessProbe", "/livez")]:
    get = sidecar.get(probe, {}).get("httpGet", {})
    expect(get.get("path") == path and get.get("port") in ("admin", ports.get("admin")),
           f"{probe} is not GET {path} on the admin port")
expect("memory" in sidecar.get("resources", {}).get("limits", {}), "the sidecar has no memory limit")

# security, for every container of the pod
pod_security = pod.get("securityContext", {})
expect(pod_security.get("seccompProfile", {}).get("type") == "RuntimeDefault", "the pod's seccomp is not RuntimeDefault")
for container in pod.get("initContainers", []) + pod.get("containers", []):
    security = container.get("securityContext", {})
    name = container["name"]
    expect(security.get("runAsNonRoot", pod_security.get("runAsNonRoot")) is True, f"{name} may run as root")
    expect(security.get("readOnlyRootFilesystem") is True, f"{name}'s root filesystem is writable")
    expect(security.get("allowPrivilegeEscalation") is False, f"{name} may escalate privileges")
    expect(security.get("capabilities", {}).get("drop") == ["ALL"], f"{name} keeps capabilities")

# every ConfigMap the pod names is there
named = [v["configMap"]["name"] for v in pod.get("volumes", []) if "configMap" in v]
for container in pod.get("initContainers", []) + pod.get("containers", []):
    named += [e["configMapRef"]["name"] for e in container.get("envFrom", []) if "configMapRef" in e]
for name in named:
    expect(name in config_maps or name in FROM_THE_POLICY_PIPELINE, f"the pod names ConfigMap {name}, which is not rendered")

# the sidecar's configuration and environment, as the pod gets them
args = sidecar.get("args", [])
config_path = pathlib.PurePosixPath(args[args.index("--config") + 1]) if "--config" in args else None
expect(config_path is not None, "the sidecar is not given --config")
config_text = None
for mount in sidecar.get("volumeMounts", []):
    if config_path and pathlib.PurePosixPath(mount["mountPath"]) == config_path.parent:
        volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
        data = config_maps.get(volume.get("configMap", {}).get("name"), {}).get("data", {})
        config_text = data.get(config_path.name)
expect(config_text is not None, f"no rendered ConfigMap holds {config_path}")
environment = {}
for source in sidecar.get("envFrom", []):
    environment.update(config_maps.get(source.get("configMapRef", {}).get("name"), {}).get("data", {}))
environment.update({e["name"]: e["value"] for e in sidecar.get("env", []) if "value" in e})

if config_text is not None:
    server = tomllib.loads(config_text).get("server", {})
    for key, port_name in [("listen", "http"), ("admin_listen", "admin")]:
        port = int(str(server.get(key, ":0")).rsplit(":", 1)[-1])
        expect(port == ports.get(port_name), f"server.{key} ({port}) is not the {port_name} port the pod declares")
    with tempfile.TemporaryDirectory() as scratch:
        config_file = pathlib.Path(scratch) / config_path.name
        config_file.write_text(config_text)
        # only what the pod has: the rendered environment, a PATH to run the binary, and
        # no instance metadata to ask (the check never reaches AWS)
        env = {"PATH": os.environ.get("PATH", "/usr/bin"), "AWS_EC2_METADATA_DISABLED": "true"} | environment
        run = subprocess.run(
            [binary, "serve", "--check-config", "--config", str(config_file), "--policies", "policies", "--entities", "entities"],
            env=env, capture_output=True, text=True,
        )
        errors = [line for line in run.stderr.splitlines() if line.startswith("error")]
        expect(run.returncode == 0, f"the rendered configuration does not load: {' '.join(errors) or run.stderr.strip()}")

# the Service reaches the sidecar's data plane, and nothing admits the app's port
service = one("Service")
for port in service.get("spec", {}).get("ports", []):
    expect(port.get("targetPort") in ("http", ports.get("http")), f"the Service targets {port.get('targetPort')}, not the sidecar's data plane")
app_ports = {p["containerPort"] for c in pod.get("containers", []) for p in c.get("ports", [])}
policy = one("NetworkPolicy")
admitted = {p["port"] for rule in policy.get("spec", {}).get("ingress", []) for p in rule.get("ports", [])}
expect(admitted and admitted <= set(ports.values()), f"the NetworkPolicy admits {sorted(admitted)}, not only the sidecar's ports")
expect(not admitted & app_ports, "the NetworkPolicy admits a port of the app")

if problems:
    sys.exit(f"{rendered_path}:\n  " + "\n  ".join(problems))
print(f"{rendered_path}: the native sidecar, its configuration and environment, the Service and the NetworkPolicy check out")
