"""The deploy configurations are valid and say the same thing (docs/deployment.md "Running on a cluster").

`deploy/dagster.yaml` is the rehearsed one; the Docker instance config and the Helm values must
carry the same queue limits, pools and run monitoring, or the cluster would not behave as the
rehearsal showed.
"""

from __future__ import annotations

import importlib
from typing import Any

import pytest
import yaml
from dagster import DefaultRunLauncher

from quantlab_pipeline.orchestration.dagster_adapter import private
from quantlab_pipeline_tests.deploy.cluster import DEPLOY_DIR, rehearsal_instance_config

process_config = private("dagster._config", "process_config")
dagster_instance_config = private("dagster._core.instance.config", "dagster_instance_config")

pytestmark = pytest.mark.deploy


def _load(*parts: str) -> dict[str, Any]:
    return yaml.safe_load(DEPLOY_DIR.joinpath(*parts).read_text())


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


@pytest.mark.parametrize("folder", [".", "docker"])
def test_instance_configs_validate_against_dagsters_schema(folder):
    config, _ = dagster_instance_config(str(DEPLOY_DIR / folder))
    assert "postgres" in config["storage"]
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert config["run_monitoring"]["enabled"] is True


def test_the_postgres_credentials_come_from_the_environment(monkeypatch):
    from dagster_postgres.utils import pg_config

    env = {"DAGSTER_PG_USERNAME": "u", "DAGSTER_PG_PASSWORD": "p", "DAGSTER_PG_HOST": "h", "DAGSTER_PG_DB": "d"}
    for key, value in {**env, "DAGSTER_PG_PORT": "6543"}.items():
        monkeypatch.setenv(key, value)
    processed = process_config(pg_config(), _load("dagster.yaml")["storage"]["postgres"])
    assert processed.success, processed.errors
    assert processed.value is not None
    db = processed.value["postgres_db"]
    assert (db["username"], db["password"], db["hostname"], db["db_name"], db["port"]) == ("u", "p", "h", "d", 6543)


def test_the_shared_config_launches_local_workers_that_run_monitoring_checks():
    launcher = _load("dagster.yaml")["run_launcher"]
    launcher_class = getattr(importlib.import_module(launcher["module"]), launcher["class"])
    assert issubclass(launcher_class, DefaultRunLauncher)
    assert launcher_class().supports_check_run_worker_health


def test_docker_config_is_the_shared_config_with_a_valid_docker_launcher():
    from dagster_docker import DockerRunLauncher

    shared, docker = _load("dagster.yaml"), _load("docker", "dagster.yaml")
    shared.pop("run_launcher")
    launcher = docker.pop("run_launcher")
    assert docker == shared
    assert (launcher["module"], launcher["class"]) == ("dagster_docker", "DockerRunLauncher")
    processed = process_config(DockerRunLauncher.config_type(), launcher["config"])
    assert processed.success, processed.errors


def test_the_compose_services_set_every_variable_the_docker_launcher_forwards_to_runs():
    compose = _load("docker", "docker-compose.yaml")
    forwarded = set(_load("docker", "dagster.yaml")["run_launcher"]["config"]["env_vars"])
    for name in ("code", "webserver", "daemon"):
        assert forwarded <= set(compose["services"][name]["environment"]), name
    # The run containers mount the volume the services share, at the same path.
    (run_volume,) = _load("docker", "dagster.yaml")["run_launcher"]["config"]["container_kwargs"]["volumes"]
    assert run_volume in compose["services"]["daemon"]["volumes"]
    assert compose["volumes"][run_volume.split(":")[0]]["name"] == run_volume.split(":")[0]


def test_helm_values_carry_the_shared_limits_pools_and_monitoring():
    shared, values = _load("dagster.yaml"), _load("k8s", "values.yaml")
    runs, pools = shared["concurrency"]["runs"], shared["concurrency"]["pools"]
    assert values["concurrency"]["enabled"] is True
    assert values["concurrency"]["runs"] == {
        "maxConcurrentRuns": runs["max_concurrent_runs"],
        "tagConcurrencyLimits": runs["tag_concurrency_limits"],
    }
    assert values["concurrency"]["pools"] == {_camel(k): v for k, v in pools.items()}
    assert values["dagsterDaemon"]["runMonitoring"] == {_camel(k): v for k, v in shared["run_monitoring"].items()}
    assert values["dagsterDaemon"]["runCoordinator"]["type"] == "QueuedRunCoordinator"
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert values["postgresql"]["postgresqlScheme"] == shared["storage"]["postgres"]["postgres_db"]["scheme"]


def test_each_month_run_pod_requests_the_memory_the_limit_budgets():
    """The memory rule's 2 GiB per month run, stated in deploy/dagster.yaml, is what a run pod requests."""
    resources = _load("k8s", "values.yaml")["runLauncher"]["config"]["k8sRunLauncher"]["runK8sConfig"]
    assert resources["containerConfig"]["resources"]["requests"]["memory"] == "2Gi"


def test_the_rehearsal_changes_only_the_limit_and_the_intervals():
    shared, rehearsed = _load("dagster.yaml"), rehearsal_instance_config()
    for key in ("run_launcher", "storage", "local_artifact_storage", "compute_logs", "telemetry"):
        assert rehearsed[key] == shared[key]
    assert rehearsed["concurrency"]["pools"] == shared["concurrency"]["pools"]
    assert rehearsed["run_monitoring"]["enabled"] is True
