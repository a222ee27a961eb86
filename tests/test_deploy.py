"""The Docker Compose topology stays valid and in step with the settings it configures."""

from __future__ import annotations

from pathlib import Path

import yaml

from services.core.settings import Settings, load_projects

ROOT = Path(__file__).resolve().parent.parent


def test_compose_runs_the_three_services_on_kafka_and_clickhouse() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"kafka", "clickhouse", "ingest", "sessionizer", "api"} <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka:4")
    assert services["clickhouse"]["image"].startswith("clickhouse/clickhouse-server:")
    for name in ("ingest", "sessionizer", "api"):
        assert services[name]["command"] == [name]
        env = services[name]["environment"]
        settings = Settings.from_env({k: str(v) for k, v in env.items()})
        assert settings.kafka_bootstrap == "kafka:9092"
        assert settings.clickhouse_url.startswith("http://")


def test_example_projects_file_loads() -> None:
    env = {"TOUCHPOINT_CONFIG": str(ROOT / "deploy" / "projects.example.toml")}
    projects, _, created = load_projects(Settings.from_env(env))
    assert not created and projects.items[0].id == "shop"


def test_the_image_holds_every_package_the_command_imports() -> None:
    """`touchpoint demo` imports loadtests: an image built without it failed at that command."""
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    copied = {line.split()[1] for line in dockerfile.splitlines() if line.startswith("COPY ")}
    pyproject = (ROOT / "pyproject.toml").read_text()
    packages = pyproject.split("[tool.setuptools.packages.find]")[1].split("include = ")[1].split("\n")[0]
    assert {p.strip(' "*') for p in packages.strip("[]").split(",")} <= copied


def test_runtime_imports_are_runtime_dependencies() -> None:
    """Every third-party module the services import at run time is a dependency of the package,
    not only of the dev extras: the sessionizer's webhooks imported httpx, a dev dependency, so
    an image built with `pip install .` could not start it."""
    import ast
    import sys
    import tomllib

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {d.split("[")[0].split(">")[0].split("=")[0].strip().lower().replace("-", "_") for d in declared}
    provided_by = {"pydantic": "fastapi", "starlette": "fastapi"}  # fastapi's own dependencies
    imported: set[str] = set()
    demo_uses = [ROOT / "loadtests" / "generator.py", ROOT / "loadtests" / "sender.py"]  # `touchpoint demo`
    for path in [*(ROOT / "services").rglob("*.py"), *demo_uses]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported.add(node.module.split(".")[0])
    third_party = {m for m in imported if m not in sys.stdlib_module_names and m not in ("services", "loadtests")}
    missing = {m for m in third_party if provided_by.get(m, m).lower() not in names}
    assert not missing, f"imported by the services but not a dependency: {sorted(missing)}"
