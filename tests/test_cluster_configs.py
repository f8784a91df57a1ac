"""The cluster recipes in cluster/ stay usable: the `ray up` configs pass Ray's own
autoscaler schema, the KubeRay manifest has the RayCluster fields the operator reads,
and the SLURM script parses. Each check is also shown to reject a broken copy.

Offline and fast: nothing is launched, no cloud API is called.
"""
from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
VM_CONFIGS = ["aws.yaml", "gcp.yaml"]
needs_bash = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def _project_pin(name: str) -> str:
    """The version pyproject.toml pins `name` to, e.g. '2.60.0' for ray."""
    match = re.search(rf'^\s*"{name}(\[[^\]]*\])?==([^";\s]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert match, f"pyproject.toml does not pin {name}"
    return match.group(2)


TORCH_PIN = f"torch=={_project_pin('torch')}"


def _load(name: str):
    return yaml.safe_load((CLUSTER / name).read_text())


# ---- ray up configs (AWS, GCP) ------------------------------------------------------------

def ray_schema_errors(config: dict) -> list[str]:
    """What `ray up` would reject before launching anything: Ray's defaults merged in,
    then Ray's autoscaler JSON schema (ray/autoscaler/ray-schema.json) and its checks."""
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    try:
        validate_config(prepare_config(copy.deepcopy(config)))
    except (jsonschema.ValidationError, ValueError, KeyError, AssertionError) as error:
        return [f"{type(error).__name__}: {str(error).splitlines()[0]}"]
    return []


def _is_gpu_node_type(node_type: dict) -> bool:
    node_config = node_type.get("node_config", {})
    family = node_config.get("InstanceType", "").split(".")[0]
    return (
        node_type.get("resources", {}).get("GPU", 0) > 0
        or bool(node_config.get("guestAccelerators"))
        or family[:1] in ("g", "p")  # AWS GPU families: g4dn, g5, g6, p4d, p5, ...
    )


def vm_config_problems(config: dict) -> list[str]:
    """What orchestrator needs from a cluster beyond Ray's schema."""
    problems = []
    node_types = config.get("available_node_types", {})
    head = config.get("head_node_type")
    workers = {name: spec for name, spec in node_types.items() if name != head}
    if not any(_is_gpu_node_type(spec) for spec in workers.values()):
        problems.append("no GPU worker group")
    if not any(not _is_gpu_node_type(spec) for spec in workers.values()):
        problems.append("no CPU worker group")
    for name, spec in workers.items():
        if spec.get("min_workers", 0) > spec.get("max_workers", config.get("max_workers", 0)):
            problems.append(f"{name}: min_workers > max_workers")

    setup = config.get("setup_commands", [])
    for command in setup:
        for version in re.findall(r"\btorch(==[0-9][\w.+]*)?", command):
            if "torch" + version != TORCH_PIN:
                problems.append(f"setup_commands: torch not pinned to {TORCH_PIN}: {command!r}")
    torch_at = [i for i, c in enumerate(setup) if TORCH_PIN in c and "pip install" in c]
    project_at = [i for i, c in enumerate(setup) if "pip install" in c and "orchestrator" in c]
    if not torch_at or not project_at:
        problems.append(f"setup_commands must install {TORCH_PIN} and orchestrator")
    elif torch_at[0] > project_at[0]:
        problems.append(f"setup_commands install orchestrator before {TORCH_PIN}")
    ray_pin = f"ray[default]=={_project_pin('ray')}"
    if not any(ray_pin in c for c in setup):
        problems.append(f"setup_commands do not install {ray_pin}")
    if not any("mount" in c and "/mnt/shared" in c for c in setup):
        problems.append("setup_commands do not mount the shared run storage at /mnt/shared")

    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in config.get(key, []) if "ray start" in c]
        if not starts or not all("RAY_AUTH_MODE=token" in c for c in starts):
            problems.append(f"{key}: `ray start` without RAY_AUTH_MODE=token")
    mounts = config.get("file_mounts") or {}
    if not any(remote.endswith(".ray/auth_token") for remote in mounts):
        problems.append("file_mounts do not copy the auth token to the nodes")
    return problems + exposure_problems(config)


def exposure_problems(config: dict) -> list[str]:
    """The dashboard on loopback only, nodes in a network the project's script makes (not
    Ray's default one, whose SSH rule is open to all), every install and image pinned."""
    problems = []
    starts = [c for c in config.get("head_start_ray_commands", []) if "ray start" in c]
    if not all("--dashboard-host=127.0.0.1" in c for c in starts):
        problems.append("head_start_ray_commands: the dashboard is not bound to 127.0.0.1")
    network_key = {"aws": "SecurityGroupIds", "gcp": "networkInterfaces"}[config["provider"]["type"]]
    for name, node_type in config.get("available_node_types", {}).items():
        if network_key not in node_type.get("node_config", {}):
            problems.append(f"{name}: no {network_key}: Ray's default opens SSH to 0.0.0.0/0")
        image = json.dumps(node_type.get("node_config", {}))
        if "/family/" in image:
            problems.append(f"{name}: an image family moves; pin one image")
    commands = [c for key in COMMAND_LISTS for c in config.get(key, [])]
    for command in commands:
        for spec in re.findall(r'pip install ([^;]+)', command):
            for requirement in re.findall(r'"[^"]+"|\S+', spec):
                requirement = requirement.strip('"')
                if requirement.startswith("-") or requirement.startswith("http"):
                    continue
                if "==" not in requirement and not re.search(r"@v?\d", requirement) and "-e" not in spec:
                    problems.append(f"unpinned install: {requirement!r}")
    return problems


@pytest.mark.parametrize("name", VM_CONFIGS)
def test_vm_config_passes_ray_autoscaler_schema(name):
    assert ray_schema_errors(_load(name)) == []


@pytest.mark.parametrize("name", VM_CONFIGS)
def test_vm_config_has_what_orchestrator_needs(name):
    assert vm_config_problems(_load(name)) == []


def _misspell_min_workers(config):
    config["available_node_types"]["cpu_worker"]["min_worker"] = config["available_node_types"][
        "cpu_worker"
    ].pop("min_workers")


def _drop_resources(config):
    del config["available_node_types"]["gpu_worker"]["resources"]


def _unknown_head_type(config):
    config["head_node_type"] = "no_such_type"


def _text_max_workers(config):
    config["max_workers"] = "eight"


def _unknown_top_level_key(config):
    config["setup_command"] = config.pop("setup_commands")


def _min_over_global_max(config):
    config["available_node_types"]["cpu_worker"]["min_workers"] = config["max_workers"] + 1


@pytest.mark.parametrize(
    "breakage",
    [_misspell_min_workers, _drop_resources, _unknown_head_type, _text_max_workers,
     _unknown_top_level_key, _min_over_global_max],
)
def test_ray_schema_check_rejects_a_broken_config(breakage):
    config = _load("aws.yaml")
    breakage(config)
    assert ray_schema_errors(config)


@pytest.mark.parametrize(
    "breakage",
    [
        lambda c: c["available_node_types"].pop("gpu_worker"),
        lambda c: c["setup_commands"].reverse(),  # orchestrator before torch
        lambda c: c["setup_commands"].insert(0, "pip install torch"),
        lambda c: c["worker_start_ray_commands"].__setitem__(
            1, "ray start --address=$RAY_HEAD_IP:6379"
        ),
        lambda c: c.__setitem__("file_mounts", {}),
    ],
    ids=["no-gpu-group", "torch-after-project", "unpinned-torch", "no-token-mode", "no-token"],
)
def test_requirement_check_rejects_a_broken_config(breakage):
    config = _load("gcp.yaml")
    breakage(config)
    assert vm_config_problems(config)


COMMAND_LISTS = ("initialization_commands", "setup_commands", "head_setup_commands",
                 "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands")


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def _dashboard_on_all_interfaces(config):
    config["head_start_ray_commands"] = [c.replace("127.0.0.1", "0.0.0.0") for c in config["head_start_ray_commands"]]


def _default_network(config):
    for node_type in config["available_node_types"].values():
        node_type["node_config"].pop("SecurityGroupIds", None)
        node_type["node_config"].pop("networkInterfaces", None)


def _unpinned_install(config):
    config["setup_commands"].append("~/venv/bin/pip install boto3")


@pytest.mark.parametrize("name", VM_CONFIGS)
@pytest.mark.parametrize("breakage", [_dashboard_on_all_interfaces, _default_network, _unpinned_install])
def test_exposure_check_rejects_an_open_config(name, breakage):
    config = _load(name)
    assert exposure_problems(config) == []
    breakage(config)
    assert exposure_problems(config)


@needs_bash
@pytest.mark.parametrize("script,tool", [("aws-security-group.sh", "aws"), ("gcp-firewall.sh", "gcloud")])
def test_firewall_scripts_open_ssh_to_the_given_range_only(script, tool, tmp_path):
    """Run with the cloud CLI replaced by a recorder (no cloud here): an open range is
    refused before any call; otherwise the only range outside the cluster is SSH_CIDR."""
    recorder = tmp_path / tool
    recorder.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/calls\necho sg-0123\n')
    recorder.chmod(0o755)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "VPC_ID": "vpc-1"}

    def run(cidr):
        return subprocess.run(["bash", str(CLUSTER / script)], env={**env, "SSH_CIDR": cidr},
                              capture_output=True, text=True, timeout=30)

    assert run("0.0.0.0/0").returncode == 2 and not (tmp_path / "calls").exists()
    assert run("203.0.113.7/32").returncode == 0
    calls = (tmp_path / "calls").read_text()
    ranges = set(re.findall(r"(?:--cidr|--source-ranges=)\s*(\S+)", calls))
    assert "203.0.113.7/32" in ranges and "0.0.0.0/0" not in calls
    assert ranges - {"203.0.113.7/32"} <= {"10.128.0.0/20"}  # the cluster's own subnet (gcp)


@pytest.mark.parametrize("name", VM_CONFIGS)
def test_vm_config_commands_are_valid_shell(name, tmp_path):
    config = _load(name)
    for key in COMMAND_LISTS:
        for index, command in enumerate(config.get(key) or []):
            script = tmp_path / f"{key}-{index}.sh"
            script.write_text(command + "\n")
            assert _bash_syntax_error(script) == "", f"{name} {key}[{index}]: {command!r}"


# ---- KubeRay RayCluster -------------------------------------------------------------------

WORKER_GROUP_KEYS = ("groupName", "replicas", "minReplicas", "maxReplicas", "rayStartParams", "template")


def _pod_problems(where: str, template, claims: set[str]) -> list[str]:
    problems = []
    spec = (template or {}).get("spec") or {}
    containers = spec.get("containers") or []
    if not containers or not all(c.get("name") and c.get("image") for c in containers):
        return [f"{where}.template.spec.containers: each needs a name and an image"]
    ray = containers[0]  # KubeRay runs Ray in the first container
    env = {e.get("name"): e for e in ray.get("env") or []}
    if env.get("RAY_AUTH_MODE", {}).get("value") != "token" or "RAY_AUTH_TOKEN" not in env:
        problems.append(f"{where}: container needs RAY_AUTH_MODE=token and RAY_AUTH_TOKEN")
    shared = {v["name"] for v in spec.get("volumes") or []
              if (v.get("persistentVolumeClaim") or {}).get("claimName") in claims}
    mounts = {m.get("name"): m.get("mountPath") for m in ray.get("volumeMounts") or []}
    if not any(mounts.get(name) == "/mnt/shared" for name in shared):
        problems.append(f"{where}: the shared claim is not mounted at /mnt/shared")
    return problems


def raycluster_problems(documents: list) -> list[str]:
    """The fields of a ray.io/v1 RayCluster that KubeRay reads, and what orchestrator needs."""
    clusters = [d for d in documents if d and d.get("kind") == "RayCluster"]
    if len(clusters) != 1:
        return [f"expected one RayCluster, found {len(clusters)}"]
    cluster = clusters[0]
    problems = []
    if cluster.get("apiVersion") != "ray.io/v1":
        problems.append(f"apiVersion {cluster.get('apiVersion')!r}, expected 'ray.io/v1'")
    if not (cluster.get("metadata") or {}).get("name"):
        problems.append("metadata.name missing")
    spec = cluster.get("spec") or {}
    if spec.get("rayVersion") != _project_pin("ray"):
        problems.append(f"spec.rayVersion {spec.get('rayVersion')!r} differs from the project's ray pin")
    claims = {
        d["metadata"]["name"]
        for d in documents
        if d and d.get("kind") == "PersistentVolumeClaim"
        and "ReadWriteMany" in (d.get("spec") or {}).get("accessModes", [])
    }
    if not claims:
        problems.append("no ReadWriteMany PersistentVolumeClaim for the shared run directory")

    def start_params(where, params):
        if not isinstance(params, dict):
            return [f"{where}.rayStartParams must be a mapping"]
        return [f"{where}.rayStartParams.{k}: values are strings" for k, v in params.items()
                if not isinstance(v, str)]

    head = spec.get("headGroupSpec") or {}
    if "rayStartParams" not in head or "template" not in head:
        problems.append("headGroupSpec needs rayStartParams and template")
    else:
        problems += start_params("headGroupSpec", head["rayStartParams"])
        problems += _pod_problems("headGroupSpec", head["template"], claims)

    groups = spec.get("workerGroupSpecs") or []
    if not groups:
        problems.append("no workerGroupSpecs")
    names = [g.get("groupName") for g in groups]
    if len(set(names)) != len(names):
        problems.append("workerGroupSpecs: groupName values must be unique")
    gpu_groups = 0
    for index, group in enumerate(groups):
        where = f"workerGroupSpecs[{index}]"
        missing = [k for k in WORKER_GROUP_KEYS if k not in group]
        if missing:
            problems.append(f"{where} misses {missing}")
            continue
        counts = [group[k] for k in ("minReplicas", "replicas", "maxReplicas")]
        if not all(isinstance(c, int) for c in counts) or not counts[0] <= counts[1] <= counts[2]:
            problems.append(f"{where}: needs minReplicas <= replicas <= maxReplicas, got {counts}")
        problems += start_params(where, group["rayStartParams"])
        problems += _pod_problems(where, group["template"], claims)
        containers = (group["template"].get("spec") or {}).get("containers") or [{}]
        limits = (containers[0].get("resources") or {}).get("limits") or {}
        gpu_groups += int(limits.get("nvidia.com/gpu", 0)) > 0
    if not gpu_groups:
        problems.append("no worker group with an nvidia.com/gpu limit")
    return problems


def _kuberay_documents():
    return list(yaml.safe_load_all((CLUSTER / "kuberay.yaml").read_text()))


def test_kuberay_manifest_is_a_usable_raycluster():
    assert raycluster_problems(_kuberay_documents()) == []


def _cluster(documents):
    return next(d for d in documents if d and d.get("kind") == "RayCluster")


@pytest.mark.parametrize(
    "breakage",
    [
        lambda d: _cluster(d).__setitem__("apiVersion", "ray.io/v1alpha1"),
        lambda d: _cluster(d)["spec"]["workerGroupSpecs"][0].pop("groupName"),
        lambda d: _cluster(d)["spec"]["headGroupSpec"].pop("rayStartParams"),
        lambda d: _cluster(d)["spec"]["headGroupSpec"]["rayStartParams"].__setitem__("num-cpus", 0),
        lambda d: _cluster(d)["spec"]["workerGroupSpecs"][0].__setitem__("minReplicas", 99),
        lambda d: _cluster(d)["spec"]["workerGroupSpecs"].pop(),  # the GPU group
        lambda d: d.pop(0),  # the shared claim
        lambda d: _cluster(d)["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0].pop("env"),
    ],
    ids=["api-version", "group-name", "head-start-params", "non-string-param", "replica-bounds",
         "no-gpu-group", "no-shared-claim", "no-token"],
)
def test_raycluster_check_rejects_a_broken_manifest(breakage):
    documents = copy.deepcopy(_kuberay_documents())
    breakage(documents)
    assert raycluster_problems(documents)


def rayjob_problems(job: dict, cluster_name: str) -> list[str]:
    """A ray.io/v1 RayJob that submits an orchestrator run to the RayCluster of
    kuberay.yaml, its storage on object storage, its submitter authenticated."""
    problems = []
    if job.get("apiVersion") != "ray.io/v1" or job.get("kind") != "RayJob":
        problems.append("not a ray.io/v1 RayJob")
    spec = job.get("spec") or {}
    if (spec.get("clusterSelector") or {}).get("ray.io/cluster") != cluster_name:
        problems.append(f"clusterSelector does not name the RayCluster {cluster_name!r}")
    entrypoint = spec.get("entrypoint") or ""
    if not re.search(r"orchestrator(\.cli)? (launch|resume) .*--run-dir (s3|gs|abfs)://", entrypoint) \
            and not re.search(r"orchestrator(\.cli)? resume (s3|gs|abfs)://", entrypoint):
        problems.append("entrypoint does not run orchestrator with its run on object storage")
    try:
        runtime_env = yaml.safe_load(spec.get("runtimeEnvYAML") or "") or {}
    except yaml.YAMLError as error:
        problems.append(f"runtimeEnvYAML is not YAML: {error}")
        runtime_env = {}
    if not str(runtime_env.get("working_dir", "")).startswith(("s3://", "gs://", "https://")):
        problems.append("runtimeEnvYAML.working_dir is not a zip on object storage or https")
    if any(k.startswith(("AWS_SECRET", "AWS_ACCESS")) for k in (runtime_env.get("env_vars") or {})):
        problems.append("credentials in runtimeEnvYAML: the nodes' own identity reaches the bucket")
    containers = ((spec.get("submitterPodTemplate") or {}).get("spec") or {}).get("containers") or [{}]
    env = {e.get("name"): e for e in containers[0].get("env") or []}
    token = (env.get("RAY_AUTH_TOKEN") or {}).get("valueFrom", {}).get("secretKeyRef", {})
    if (env.get("RAY_AUTH_MODE") or {}).get("value") != "token" or not token.get("name"):
        problems.append("the submitter has no RAY_AUTH_MODE=token and RAY_AUTH_TOKEN from a Secret")
    return problems


def _rayjob():
    return yaml.safe_load((CLUSTER / "kuberay-rayjob.yaml").read_text())


def test_kuberay_rayjob_submits_a_run_on_object_storage_to_the_raycluster():
    assert rayjob_problems(_rayjob(), _cluster(_kuberay_documents())["metadata"]["name"]) == []


@pytest.mark.parametrize(
    "breakage",
    [
        lambda j: j.__setitem__("kind", "RayCluster"),
        lambda j: j["spec"].__setitem__("clusterSelector", {"ray.io/cluster": "other"}),
        lambda j: j["spec"].__setitem__("entrypoint", "python -m orchestrator.cli launch job.yaml --run-dir /tmp/x"),
        lambda j: j["spec"].__setitem__("runtimeEnvYAML", "working_dir: ."),
        lambda j: j["spec"].__setitem__("runtimeEnvYAML", "working_dir: s3://b/j.zip\nenv_vars: {AWS_SECRET_ACCESS_KEY: x}"),
        lambda j: j["spec"]["submitterPodTemplate"]["spec"]["containers"][0].pop("env"),
    ],
    ids=["kind", "other-cluster", "local-run-dir", "local-working-dir", "credentials", "no-token"],
)
def test_rayjob_check_rejects_a_broken_manifest(breakage):
    job = copy.deepcopy(_rayjob())
    breakage(job)
    assert rayjob_problems(job, "orchestrator")


# ---- SLURM ---------------------------------------------------------------------------------



def _bash_syntax_error(path: Path) -> str:
    result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True, timeout=10)
    return "" if result.returncode == 0 else result.stderr.strip() or f"bash -n exit {result.returncode}"


@needs_bash
def test_slurm_script_parses():
    assert _bash_syntax_error(CLUSTER / "slurm.sh") == ""


@needs_bash
def test_bash_syntax_check_rejects_a_broken_script(tmp_path):
    broken = tmp_path / "slurm.sh"
    broken.write_text((CLUSTER / "slurm.sh").read_text().rstrip().removesuffix("fi") + "\n")
    assert _bash_syntax_error(broken)


def test_slurm_script_starts_ray_with_token_auth_and_launches_on_shared_storage():
    script = (CLUSTER / "slurm.sh").read_text()
    assert script.startswith("#!/bin/bash\n")
    assert re.search(r"^#SBATCH --nodes=\d+$", script, re.M)
    assert "ray start --head" in script and "ray start --address=" in script
    assert "export RAY_AUTH_MODE=token" in script and "export RAY_AUTH_TOKEN" in script
    launch = re.search(r"^\s*orchestrator launch (.*)$", script, re.M)
    assert launch, "no `orchestrator launch` line"
    assert "--address" in launch.group(1) and '--run-dir "$RUN_DIR"' in launch.group(1)
    assert re.search(r"^RUN_DIR=.*\$SHARED/runs/", script, re.M)


def test_image_installs_pinned_torch_before_the_project():
    lines = [l for l in (CLUSTER / "Dockerfile").read_text().splitlines() if l.startswith("RUN ")]
    torch_at = next(i for i, l in enumerate(lines) if TORCH_PIN in l)
    project_at = next(i for i, l in enumerate(lines) if re.search(r"pip install .*\s\.(\s|$)", l))
    assert torch_at < project_at
