"""Every file in cluster/ parses, names things that exist in the repository, and passes the schema its tool
checks (Ray's cluster-launcher JSON schema and Serve's deploy schema, both shipped with Ray; KubeRay's CRDs are
not available offline, so the fields the operator requires are checked instead)."""

import importlib
import json
import shlex
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.serve.schema import ServeDeploySchema

from kka_ray.config import load_config
from kka_ray.loop import KKAConfig
from kka_ray.serve import deployments
from kka_ray.serve.app import Ingress
from kka_ray.serve.config import ServeConfig

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"


def load(name):
    return yaml.safe_load((CLUSTER / name).read_text())


def test_every_cluster_file_parses():
    names = {p.name for p in CLUSTER.iterdir()}
    assert {"launcher.yaml", "rayjob.yaml", "rayservice.yaml", "serve.yaml", "runtime_env.yaml", "Dockerfile",
            "README.md"} <= names
    for p in CLUSTER.glob("*.yaml"):
        assert isinstance(yaml.safe_load(p.read_text()), dict), p


def test_launcher_matches_rays_schema():
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    cfg = load("launcher.yaml")
    jsonschema.validate(cfg, schema)
    assert cfg["head_node_type"] in cfg["available_node_types"]


def check_serve_config(cfg: dict) -> None:
    ServeDeploySchema.model_validate(cfg)
    known = {Ingress.name, *(d.name for d in (deployments.Describer, deployments.Renderer, deployments.Evaluator))}
    for app in cfg["applications"]:
        module, _, attr = app["import_path"].partition(":")
        assert callable(getattr(importlib.import_module(module), attr))
        load_config(ServeConfig, REPO / app["args"]["config"], app["args"]["overrides"])
        assert {d["name"] for d in app["deployments"]} <= known


def test_serve_config_file():
    cfg = load("serve.yaml")
    check_serve_config(cfg)
    assert cfg["http_options"]["host"] == "127.0.0.1"


def ray_pod_fields(spec: dict) -> None:
    head = spec["headGroupSpec"]
    assert "rayStartParams" in head and head["template"]["spec"]["containers"]
    for group in spec["workerGroupSpecs"]:
        for key in ("groupName", "replicas", "minReplicas", "maxReplicas", "rayStartParams", "template"):
            assert key in group, key
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        assert group["template"]["spec"]["containers"]
    assert spec["rayVersion"] == ray.__version__


def test_rayjob_names_a_real_entrypoint_and_config():
    job = load("rayjob.yaml")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob") and job["metadata"]["name"]
    ray_pod_fields(job["spec"]["rayClusterSpec"])
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[0] == "python" and (REPO / argv[1]).is_file()
    config = argv[argv.index("--config") + 1]
    assert load_config(KKAConfig, REPO / config).name
    yaml.safe_load(job["spec"]["runtimeEnvYAML"])


def test_rayservice_embeds_the_serve_config():
    svc = load("rayservice.yaml")
    assert (svc["apiVersion"], svc["kind"]) == ("ray.io/v1", "RayService")
    ray_pod_fields(svc["spec"]["rayClusterConfig"])
    embedded = yaml.safe_load(svc["spec"]["serveConfigV2"])
    check_serve_config(embedded)
    local = load("serve.yaml")
    # the same application as cluster/serve.yaml; only the listen address differs (inside a pod)
    assert embedded["applications"][0]["deployments"] == local["applications"][0]["deployments"]
    assert embedded["applications"][0]["import_path"] == local["applications"][0]["import_path"]


def test_no_dashboard_listens_beyond_loopback_without_rays_token_auth():
    head = load("launcher.yaml")["head_start_ray_commands"]
    assert any("--dashboard-host=127.0.0.1" in c for c in head) and not any("0.0.0.0" in c for c in head)
    for name, key in (("rayjob.yaml", "rayClusterSpec"), ("rayservice.yaml", "rayClusterConfig")):
        spec = load(name)["spec"][key]
        if spec["headGroupSpec"]["rayStartParams"].get("dashboard-host", "127.0.0.1") != "127.0.0.1":
            assert spec.get("authOptions", {}).get("mode") == "token", name
    for pod in ("rayjob.yaml", "rayservice.yaml", "serve.yaml"):  # the serve token never in a runtime_env
        assert "KKA_SERVE_TOKEN" not in str(yaml.safe_load((CLUSTER / pod).read_text()).get("runtimeEnvYAML", ""))
    for app in load("serve.yaml")["applications"]:
        assert "KKA_SERVE_TOKEN" not in str(app.get("runtime_env", {}))


def test_runtime_env_is_accepted_by_ray():
    from ray.runtime_env import RuntimeEnv

    env = RuntimeEnv(**load("runtime_env.yaml"))
    assert env["working_dir"] == "."


@pytest.mark.parametrize("path", ["configs/kka/cifar100_gpu.yaml", "configs/kka/demo.yaml",
                                  "configs/serve/default.yaml"])
def test_configs_named_by_the_cluster_docs_load(path):
    model = ServeConfig if "serve" in path else KKAConfig
    load_config(model, REPO / path)


def test_dockerfile_uses_the_pinned_ray():
    assert f"rayproject/ray:{ray.__version__}" in (CLUSTER / "Dockerfile").read_text()
