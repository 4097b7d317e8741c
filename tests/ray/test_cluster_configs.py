"""cluster/: launcher YAMLs through Ray's own validator plus our rules (CPU-less head, GPU workers from
zero, explicit pinned setup, dashboard on localhost, token auth), KubeRay manifests structurally, the
runtime env and its helper, the cluster run config. No cloud, no Kubernetes: files only.

Each rule is a ``check_*`` function; test_checks_catch_broken_configs breaks a config on purpose to
show each rule can fail.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import shlex
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

from conftest import REPO
from dpo_ray.config_load import load_config

CLUSTER = REPO / "cluster"
LAUNCHERS = ["aws.yaml", "gcp.yaml"]
SHARED_MOUNT = "/mnt/shared"
SECRET_NAME = re.compile(r"(^|[_-])(TOKEN|API_KEY|SECRET|PASSWORD|ACCESS_KEY)($|[_-])", re.IGNORECASE)
SECRET_VALUE = re.compile(r"hf_[A-Za-z0-9]{20,}|AKIA[0-9A-Z]{16}|ghp_[A-Za-z0-9]{30,}|sk-[A-Za-z0-9]{20,}")


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _pyproject_requirements() -> dict[str, Requirement]:
    tomllib = pytest.importorskip("tomllib")
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return {Requirement(d).name: Requirement(d) for d in deps}


def _ray_version() -> str:
    (pin,) = _pyproject_requirements()["ray"].specifier
    return pin.version


# ---------------------------------------------------------------------------- launcher rules


def check_launcher(raw: dict[str, Any]) -> None:
    """Our rules for a cluster-launcher YAML (Ray's validator fills defaults in, so these read the raw file)."""
    types = raw["available_node_types"]
    head = raw["head_node_type"]
    assert types[head]["resources"] == {"CPU": 0}, "the head must offer no CPU to tasks"
    workers = {name: t for name, t in types.items() if name != head}
    assert workers, "no worker node types"
    for name, t in workers.items():
        assert t.get("min_workers") == 0, f"{name}: min_workers must be 0 (scale from zero)"
        assert 1 <= t["max_workers"] <= raw["max_workers"], f"{name}: max_workers"
        assert t["resources"].get("GPU", 0) >= 1, f"{name}: a GPU worker type declares its GPUs"
    configs = json.dumps([t["node_config"] for t in workers.values()])
    assert '"spot"' in configs or '"SPOT"' in configs, "no spot worker type"
    assert any("spot" not in json.dumps(t["node_config"]).lower() for t in workers.values()), "no on-demand worker type"
    assert raw["idle_timeout_minutes"] > 0
    assert raw["docker"]["image"] == f"rayproject/ray:{_ray_version()}-py311-gpu"


def check_launcher_setup(raw: dict[str, Any]) -> None:
    """setup_commands explicit (never the provider's nightly wheel) and pinned."""
    setup = raw.get("setup_commands")
    assert setup, "setup_commands missing: the provider defaults would install a nightly Ray"
    text = "\n".join(setup)
    assert re.search(r'"dpo_ray @ \S+/v\d+\.\d+\.\d+\.(tar\.gz|zip)"', text), "dpo_ray is not installed at a pinned tag"
    torch = re.search(r'"torch==([\d.]+)"', text)
    assert torch and Version(torch.group(1)) in _pyproject_requirements()["torch"].specifier, "torch is not pinned"
    assert "ray-wheels" not in text and "nightly" not in text


def check_launcher_security(raw: dict[str, Any]) -> None:
    """Dashboard on 127.0.0.1 only; every `ray start` with token auth; the token file reaches the nodes."""
    head_start = " ".join(raw["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    assert "0.0.0.0" not in yaml.safe_dump(raw)
    for cmd in raw["head_start_ray_commands"] + raw["worker_start_ray_commands"]:
        if "ray start" in cmd:
            assert "RAY_AUTH_MODE=token ray start" in cmd, cmd
    assert raw["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_passes_rays_validator(name: str) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(_yaml(CLUSTER / name))
    validate_config(prepared)
    # After Ray merged the provider defaults, still our setup and no nightly wheel.
    assert prepared["setup_commands"] == _yaml(CLUSTER / name)["setup_commands"]


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_rules(name: str) -> None:
    raw = _yaml(CLUSTER / name)
    check_launcher(raw)
    check_launcher_setup(raw)
    check_launcher_security(raw)
    assert f"-v {SHARED_MOUNT}:{SHARED_MOUNT}" in raw["docker"]["run_options"]
    assert any(SHARED_MOUNT in cmd and "mount" in cmd for cmd in raw["initialization_commands"])


def test_rays_validator_rejects_a_broken_config() -> None:
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = _yaml(CLUSTER / "aws.yaml")
    raw["available_node_types"]["gpu_spot"]["resources"] = {"GPU": -1}
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(raw))


def _break(raw: dict[str, Any], path: str, value: Any = None) -> dict[str, Any]:
    """A copy of ``raw`` with the dotted ``path`` set to ``value`` (deleted when value is None)."""
    broken = copy.deepcopy(raw)
    *parents, last = path.split(".")
    node = broken
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if value is None:
        del node[last]
    else:
        node[int(last) if isinstance(node, list) else last] = value
    return broken


@pytest.mark.parametrize("check, path, value", [
    (check_launcher_setup, "setup_commands", None),
    (check_launcher_setup, "setup_commands.1", 'pip install "dpo_ray @ git+https://github.com/YOUR_ORG/dpo_ray"'),
    (check_launcher, "available_node_types.gpu_spot.min_workers", None),
    (check_launcher, "available_node_types.gpu_ondemand.min_workers", 1),
    (check_launcher, "available_node_types.head.resources", {"CPU": 8}),
    (check_launcher, "docker.image", "rayproject/ray:latest-gpu"),
    (check_launcher_security, "head_start_ray_commands.1", "ray start --head --dashboard-host=0.0.0.0"),
    (check_launcher_security, "worker_start_ray_commands.1", "ray start --address=$RAY_HEAD_IP:6379"),
])
def test_checks_catch_broken_configs(check: Any, path: str, value: Any) -> None:
    raw = _yaml(CLUSTER / "aws.yaml")
    check(raw)  # the shipped file passes ...
    with pytest.raises((AssertionError, KeyError)):
        check(_break(raw, path, value))  # ... and the broken copy does not


# ---------------------------------------------------------------------------- secrets in files


def check_no_secret_literals(text: str, where: str) -> None:
    assert not SECRET_VALUE.search(text), f"{where}: looks like a literal credential"
    for doc in yaml.safe_load_all(text) if where.endswith(".yaml") else []:
        _check_env_entries(doc, where)


def _check_env_entries(node: Any, where: str) -> None:
    """Kubernetes env entries named like a secret take valueFrom, and runtime envs set no such env_vars."""
    if isinstance(node, dict):
        if "name" in node and SECRET_NAME.search(str(node["name"])) and ("value" in node or "valueFrom" in node):
            assert "value" not in node and "secretKeyRef" in node["valueFrom"], f"{where}: {node['name']} must come from a Secret"
        for key, value in node.items():
            if key == "env_vars" and isinstance(value, dict):
                assert not [k for k in value if SECRET_NAME.search(k)], f"{where}: a secret in env_vars"
            if key == "runtimeEnvYAML":
                _check_env_entries(yaml.safe_load(value), f"{where} runtimeEnvYAML")
            _check_env_entries(value, where)
    elif isinstance(node, list):
        for item in node:
            _check_env_entries(item, where)


def test_no_secret_literals_in_cluster_files() -> None:
    files = sorted(p for p in CLUSTER.rglob("*") if p.is_file() and p.suffix in {".yaml", ".py"})
    assert len(files) >= 8
    for path in files:
        check_no_secret_literals(path.read_text(), str(path.relative_to(REPO)))


@pytest.mark.parametrize("text", [
    "env_vars:\n  HF_TOKEN: abc\n",
    "runtimeEnvYAML: |\n  env_vars:\n    WANDB_API_KEY: abc\n",
    "env:\n  - name: HF_TOKEN\n    value: abc\n",
    "token: hf_abcdefghijklmnopqrstuvwxyz\n",
])
def test_secret_check_catches_literals(text: str) -> None:
    with pytest.raises(AssertionError):
        check_no_secret_literals(text, "example.yaml")


# ---------------------------------------------------------------------------- KubeRay


def check_kuberay_cluster_spec(spec: dict[str, Any], local_dashboard: bool) -> None:
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["authOptions"]["mode"] == "token"
    assert spec["rayVersion"] == _ray_version()
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert head.get("serviceType", "ClusterIP") == "ClusterIP", "the head service must stay in-cluster"
    assert head["rayStartParams"]["dashboard-host"] == ("127.0.0.1" if local_dashboard else "0.0.0.0")
    gpu_groups = []
    for group in spec["workerGroupSpecs"]:
        assert group["minReplicas"] == 0 and group["replicas"] == 0 and group["maxReplicas"] >= 1, group["groupName"]
        (container,) = group["template"]["spec"]["containers"]
        if int(container["resources"]["limits"].get("nvidia.com/gpu", 0)) >= 1:
            gpu_groups.append(group)
    assert gpu_groups, "no GPU worker group"
    pods = [head["template"]["spec"], *(g["template"]["spec"] for g in spec["workerGroupSpecs"])]
    for pod in pods:
        for container in pod["containers"]:
            assert container["image"] == f"rayproject/ray:{_ray_version()}-py311-gpu"
            assert {"name": "shared", "mountPath": SHARED_MOUNT} in container["volumeMounts"]
            hf = [e for e in container.get("env", []) if e["name"] == "HF_TOKEN"]
            assert hf and "secretKeyRef" in hf[0]["valueFrom"]
        claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
        assert claims == {_yaml(CLUSTER / "kuberay" / "shared-storage.yaml")["metadata"]["name"]}


def test_kuberay_raycluster() -> None:
    doc = _yaml(CLUSTER / "kuberay" / "raycluster.yaml")
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayCluster")
    check_kuberay_cluster_spec(doc["spec"], local_dashboard=True)


def test_kuberay_rayjob() -> None:
    doc = _yaml(CLUSTER / "kuberay" / "rayjob.yaml")
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayJob")
    spec = doc["spec"]
    args = shlex.split(spec["entrypoint"])
    assert args[:2] == ["python", "pipelines/dpo.py"] and (REPO / args[1]).is_file()
    config = args[args.index("--config") + 1]
    assert (REPO / config).is_file(), f"entrypoint --config {config} does not exist"
    load_config(REPO / config)
    assert spec["shutdownAfterJobFinishes"] is True
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert re.fullmatch(r"https://\S+/v\d+\.\d+\.\d+\.zip", runtime_env["working_dir"]), "working_dir must be a pinned release"
    assert runtime_env["pip"] == _yaml(CLUSTER / "runtime_env.yaml")["pip"]
    # The operator and its submitter reach the job API through the head's ClusterIP Service.
    check_kuberay_cluster_spec(spec["rayClusterSpec"], local_dashboard=False)


def test_kuberay_checks_catch_broken_specs() -> None:
    spec = _yaml(CLUSTER / "kuberay" / "raycluster.yaml")["spec"]
    for path, value in [("enableInTreeAutoscaling", False), ("workerGroupSpecs.0.minReplicas", 1),
                        ("authOptions", None), ("headGroupSpec.rayStartParams.dashboard-host", "0.0.0.0"),
                        ("headGroupSpec.serviceType", "LoadBalancer")]:
        with pytest.raises((AssertionError, KeyError)):
            check_kuberay_cluster_spec(_break(spec, path, value), local_dashboard=True)


def test_shared_storage_is_read_write_many() -> None:
    pvc = _yaml(CLUSTER / "kuberay" / "shared-storage.yaml")
    assert pvc["kind"] == "PersistentVolumeClaim" and pvc["spec"]["accessModes"] == ["ReadWriteMany"]


# ---------------------------------------------------------------------------- runtime env


def _runtime_env_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("cluster_runtime_env", CLUSTER / "runtime_env.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_runtime_env_yaml() -> None:
    from ray.runtime_env import RuntimeEnv

    env = _yaml(CLUSTER / "runtime_env.yaml")
    RuntimeEnv(**env)  # Ray's own field checks
    assert (REPO / env["working_dir"]).resolve() == REPO  # relative to the repository root, where `ray job submit` runs
    requirements = _pyproject_requirements()
    pins = [Requirement(p) for p in env["pip"]["packages"]]
    assert "ray" not in {p.name for p in pins}, "Ray comes from the image, never from the runtime env"
    for pin in pins:
        (spec,) = pin.specifier
        assert spec.operator == "==", f"{pin} is not pinned"
        assert pin.name in requirements and Version(spec.version) in requirements[pin.name].specifier, f"{pin} vs pyproject.toml"
    assert {name for name in requirements if name != "ray"} == {p.name for p in pins}  # every dependency, pinned


def test_runtime_env_helper_passes_secrets_from_the_environment(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    helper = _runtime_env_module()
    env = helper.build_runtime_env(CLUSTER / "runtime_env.yaml", {"HF_TOKEN": "hf_x", "UNRELATED": "y", "WANDB_API_KEY": ""})
    assert env["env_vars"]["HF_TOKEN"] == "hf_x"
    assert "UNRELATED" not in env["env_vars"] and "WANDB_API_KEY" not in env["env_vars"]
    assert env["pip"] == _yaml(CLUSTER / "runtime_env.yaml")["pip"]
    assert "pip" not in helper.build_runtime_env(CLUSTER / "runtime_env.yaml", {}, pip=False)
    assert "HF_TOKEN" not in _yaml(CLUSTER / "runtime_env.yaml").get("env_vars", {})  # the file stays clean

    leaky = tmp_path / "leaky.yaml"
    leaky.write_text("working_dir: .\nenv_vars:\n  HF_TOKEN: hf_literal\n")
    with pytest.raises(ValueError, match="HF_TOKEN"):
        helper.build_runtime_env(leaky, {})
    assert helper.main(["--file", str(leaky)]) == 2
    assert helper.main(["--no-pip"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["working_dir"] == "." and "pip" not in printed


# ---------------------------------------------------------------------------- cluster run config


def test_cluster_run_config() -> None:
    cfg = load_config(CLUSTER / "dpo_cluster.yaml")
    assert cfg.train.use_gpu and cfg.train.bf16 and cfg.reference.num_gpus_per_actor > 0
    assert cfg.train.num_workers >= 2 and cfg.train.placement_strategy == "SPREAD"
    assert cfg.train.checkpoint_every and cfg.train.max_failures >= 1  # spot workers
    assert cfg.model.trust_remote_code is False
    for path in (cfg.output_dir, cfg.reference.cache_dir, cfg.data.cache_dir):
        assert path.startswith((SHARED_MOUNT + "/", "s3://", "gs://")), f"{path} is not on shared storage"
