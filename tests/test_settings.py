"""Configuration from the environment and the projects file."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.core.settings import ConfigError, Settings, load_projects


def test_environment_names_of_the_contract(tmp_path: Path) -> None:
    s = Settings.from_env(
        {
            "TOUCHPOINT_HOST": "0.0.0.0",
            "TOUCHPOINT_PORT": "9000",
            "TOUCHPOINT_DATA_DIR": str(tmp_path),
            "TOUCHPOINT_KAFKA_BOOTSTRAP": "k:9092",
        }
    )
    assert (s.host, s.port, s.data_dir, s.kafka_bootstrap) == ("0.0.0.0", 9000, tmp_path, "k:9092")
    assert s.clickhouse_url == f"chdb://{tmp_path / 'clickhouse'}"
    assert Settings.from_env({}).kafka_bootstrap is None
    with pytest.raises(ConfigError, match="TOUCHPOINT_PORT"):
        Settings.from_env({"TOUCHPOINT_PORT": "eighty"})
    assert Settings.from_env({}).retention_days is None  # keep everything unless told
    assert Settings.from_env({"TOUCHPOINT_RETENTION_DAYS": "395"}).retention_days == 395
    for bad in ("0", "-3", "a year"):
        with pytest.raises(ConfigError, match="TOUCHPOINT_RETENTION_DAYS"):
            Settings.from_env({"TOUCHPOINT_RETENTION_DAYS": bad})


def test_default_project_is_created_once_and_kept(tmp_path: Path) -> None:
    s = Settings.from_env({"TOUCHPOINT_DATA_DIR": str(tmp_path)})
    projects, path, created = load_projects(s)
    assert created and path == tmp_path / "projects.toml"
    (project,) = projects.items
    assert project.id == "default" and project.write_keys[0].startswith("wk_")
    again, _, created_again = load_projects(s)
    assert not created_again and again.items[0].api_keys == project.api_keys


def test_projects_file_is_validated(tmp_path: Path) -> None:
    bad = tmp_path / "p.toml"
    bad.write_text('[[projects]]\nid = "x"\nwrite_keys = []\napi_keys = ["a"]\n')
    s = Settings.from_env({"TOUCHPOINT_CONFIG": str(bad)})
    with pytest.raises(ConfigError, match=r"projects\[0\]\.write_keys"):
        load_projects(s)
    good = tmp_path / "g.toml"
    good.write_text(
        '[[projects]]\nid = "shop"\nwrite_keys = ["w"]\napi_keys = ["a"]\n'
        'goals = ["Order Completed"]\nsession_timeout_minutes = 20\n'
    )
    projects, _, _ = load_projects(Settings.from_env({"TOUCHPOINT_CONFIG": str(good)}))
    assert projects.by_write_key["w"].session_timeout_minutes == 20
    assert projects.by_api_key["a"].goals == ("Order Completed",)
    hooked = tmp_path / "h.toml"
    hooked.write_text('[[projects]]\nid = "x"\nwrite_keys = ["w"]\napi_keys = ["a"]\nabandonment_webhook = "ftp://x"\n')
    with pytest.raises(ConfigError, match=r"projects\[0\]\.abandonment_webhook must be an http"):
        load_projects(Settings.from_env({"TOUCHPOINT_CONFIG": str(hooked)}))


def test_journey_stages_are_parsed_and_validated(tmp_path: Path) -> None:
    good = tmp_path / "s.toml"
    good.write_text(
        '[[projects]]\nid = "shop"\nwrite_keys = ["w"]\napi_keys = ["a"]\n'
        '[[projects.stages]]\nname = "awareness"\ntouchpoints = ["Ad Clicked", {type = "page", path = "/"}]\n'
    )
    projects, _, _ = load_projects(Settings.from_env({"TOUCHPOINT_CONFIG": str(good)}))
    (stage,) = projects.items[0].stages
    assert stage.name == "awareness" and stage.touchpoints == ("Ad Clicked", {"type": "page", "path": "/"})
    bad = tmp_path / "b.toml"
    bad.write_text(
        '[[projects]]\nid = "shop"\nwrite_keys = ["w"]\napi_keys = ["a"]\n'
        '[[projects.stages]]\nname = "x"\ntouchpoints = []\n'
    )
    with pytest.raises(ConfigError, match=r"stages\[0\]\.touchpoints"):
        load_projects(Settings.from_env({"TOUCHPOINT_CONFIG": str(bad)}))
