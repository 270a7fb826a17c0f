"""Settings from the environment, a TOML file and systemd credentials."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from loguru import logger

from bookingsync.cli import main
from bookingsync.errors import ConfigurationError
from bookingsync.settings import Settings, load_settings, state_directory

VYTE_KEY = "vyte-secret-7c1e"
PIPEDRIVE_TOKEN = "pd-secret-93ab"
CREDENTIALS = {"vyte_api_key": VYTE_KEY, "pipedrive_api_token": PIPEDRIVE_TOKEN}


def load_with_credentials(**overrides: Any) -> Settings:
    return load_settings(None, **CREDENTIALS, **overrides)


def problems_of(**overrides: Any) -> list[str]:
    """Return the problems ``load_settings`` reports for these values."""
    with pytest.raises(ConfigurationError) as caught:
        load_with_credentials(**overrides)
    return caught.value.problems


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bookingsync.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Send loguru back to stderr after a CLI run has reconfigured it."""
    yield
    logger.remove()
    logger.add(lambda message: sys.stderr.write(message))


# Required and invalid values ------------------------------------------------


def test_settings_missing_credentials_reported_together() -> None:
    """Both missing secrets are named in one error."""
    with pytest.raises(ConfigurationError) as caught:
        load_settings(None)

    text = "\n".join(caught.value.problems)
    assert len(caught.value.problems) == 2
    assert "BOOKINGSYNC_VYTE_API_KEY is missing" in text
    assert "BOOKINGSYNC_PIPEDRIVE_API_TOKEN is missing" in text


def test_settings_blank_credential_invalid() -> None:
    """A credential of only spaces is as good as missing."""
    with pytest.raises(ConfigurationError) as caught:
        load_settings(None, vyte_api_key="   ", pipedrive_api_token=PIPEDRIVE_TOKEN)

    assert len(caught.value.problems) == 1
    assert "BOOKINGSYNC_VYTE_API_KEY" in caught.value.problems[0]


@pytest.mark.parametrize(
    ("name", "value", "variable", "fix"),
    [
        pytest.param(
            "poll_interval",
            "abc",
            "BOOKINGSYNC_POLL_INTERVAL",
            "valid integer",
            id="poll-interval-not-number",
        ),
        pytest.param(
            "poll_interval",
            "1",
            "BOOKINGSYNC_POLL_INTERVAL",
            "greater than or equal to 5",
            id="poll-interval-too-short",
        ),
        pytest.param(
            "vyte_base_url",
            "api.vyte.in",
            "BOOKINGSYNC_VYTE_BASE_URL",
            "not an http(s) URL",
            id="base-url-without-scheme",
        ),
        pytest.param(
            "pipedrive_base_url",
            "https://acme.pipedrive.com/?x=1",
            "BOOKINGSYNC_PIPEDRIVE_BASE_URL",
            "must not contain a query",
            id="base-url-with-query",
        ),
        pytest.param(
            "cancellation_mode",
            "archive",
            "BOOKINGSYNC_CANCELLATION_MODE",
            "'mark' or 'delete'",
            id="unknown-cancellation-mode",
        ),
        pytest.param(
            "deal_title_template",
            "{company} deal",
            "BOOKINGSYNC_DEAL_TITLE_TEMPLATE",
            "use only the placeholders {title}, {organization}",
            id="template-unknown-placeholder",
        ),
        pytest.param(
            "activity_subject_template",
            "{title.upper}{title.missing}",
            "BOOKINGSYNC_ACTIVITY_SUBJECT_TEMPLATE",
            "not a valid template",
            id="template-attribute",
        ),
        pytest.param(
            "activity_subject_template",
            "Meeting {title",
            "BOOKINGSYNC_ACTIVITY_SUBJECT_TEMPLATE",
            "not a valid template",
            id="template-unclosed-brace",
        ),
        pytest.param(
            "log_level",
            "LOUD",
            "BOOKINGSYNC_LOG_LEVEL",
            "DEBUG, INFO, WARNING, ERROR",
            id="unknown-log-level",
        ),
    ],
)
def test_settings_invalid_value_names_variable_and_fix(
    name: str, value: str, variable: str, fix: str
) -> None:
    """An invalid value is reported with its variable and what is expected."""
    problems = problems_of(**{name: value})

    assert len(problems) == 1
    assert problems[0].startswith(f"{variable} is invalid")
    assert fix in problems[0]
    assert f"set {variable}" in problems[0]


def test_settings_template_unknown_placeholder_named() -> None:
    """The error quotes the unknown placeholder itself."""
    problems = problems_of(deal_title_template="{company} deal")

    assert "unknown placeholder {company}" in problems[0]


def test_settings_invalid_env_value_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """An invalid value from the environment names its variable."""
    monkeypatch.setenv("BOOKINGSYNC_POLL_INTERVAL", "abc")

    problems = problems_of()

    assert len(problems) == 1
    assert problems[0].startswith("BOOKINGSYNC_POLL_INTERVAL is invalid")


def test_settings_all_problems_reported_together() -> None:
    """Several invalid values give one error that lists each of them."""
    problems = problems_of(poll_interval="abc", cancellation_mode="archive")

    text = "\n".join(problems)
    assert "BOOKINGSYNC_POLL_INTERVAL" in text
    assert "BOOKINGSYNC_CANCELLATION_MODE" in text


# The TOML file ----------------------------------------------------------------


def test_settings_toml_file_loaded(tmp_path: Path) -> None:
    """Keys in the TOML file are setting names without the prefix."""
    path = write_config(
        tmp_path,
        f'vyte_api_key = "{VYTE_KEY}"\n'
        f'pipedrive_api_token = "{PIPEDRIVE_TOKEN}"\n'
        "poll_interval = 120\n"
        'internal_domains = ["Staff.Example"]\n'
        'cancellation_mode = "delete"\n',
    )

    settings = load_settings(path)

    assert settings.vyte_api_key.get_secret_value() == VYTE_KEY
    assert settings.poll_interval == 120
    assert settings.internal_domains == ["staff.example"]
    assert settings.cancellation_mode == "delete"


def test_settings_env_beats_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A variable in the environment wins over the same key in the file."""
    path = write_config(tmp_path, "poll_interval = 120\nlookback_days = 7\n")
    monkeypatch.setenv("BOOKINGSYNC_POLL_INTERVAL", "300")

    settings = load_settings(path, **CREDENTIALS)

    assert settings.poll_interval == 300
    assert settings.lookback_days == 7


def test_settings_unknown_file_key_named(tmp_path: Path) -> None:
    """A misspelt key in the file is an error naming the key and the file."""
    path = write_config(tmp_path, "pol_interval = 120\n")

    with pytest.raises(ConfigurationError) as caught:
        load_settings(path, **CREDENTIALS)

    assert len(caught.value.problems) == 1
    assert "'pol_interval'" in caught.value.problems[0]
    assert str(path) in caught.value.problems[0]


def test_settings_invalid_file_value_names_file(tmp_path: Path) -> None:
    """An invalid value in the file points at both the variable and the file."""
    path = write_config(tmp_path, 'poll_interval = "abc"\n')

    with pytest.raises(ConfigurationError) as caught:
        load_settings(path, **CREDENTIALS)

    assert "BOOKINGSYNC_POLL_INTERVAL is invalid" in caught.value.problems[0]
    assert f"`poll_interval = ...` in {path}" in caught.value.problems[0]


def test_settings_toml_syntax_error_names_file(tmp_path: Path) -> None:
    """A file that is not TOML is an error naming the file."""
    path = write_config(tmp_path, "poll_interval = = 1\n")

    with pytest.raises(ConfigurationError) as caught:
        load_settings(path, **CREDENTIALS)

    assert str(path) in caught.value.problems[0]


def test_settings_explicit_missing_file_error(tmp_path: Path) -> None:
    """A config file named explicitly must exist."""
    path = tmp_path / "absent.toml"

    with pytest.raises(ConfigurationError) as caught:
        load_settings(path, **CREDENTIALS)

    assert str(path) in caught.value.problems[0]
    assert "does not exist" in caught.value.problems[0]


def test_settings_directory_as_file_error(tmp_path: Path) -> None:
    """A directory given as the config file is reported, not read."""
    with pytest.raises(ConfigurationError) as caught:
        load_settings(tmp_path, **CREDENTIALS)

    assert str(tmp_path) in caught.value.problems[0]


# Secrets ----------------------------------------------------------------------


def test_settings_credentials_directory_supplies_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """systemd credential files, named like the variable or the setting, work."""
    (tmp_path / "BOOKINGSYNC_VYTE_API_KEY").write_text(f"{VYTE_KEY}\n")
    (tmp_path / "pipedrive_api_token").write_text(PIPEDRIVE_TOKEN)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))

    settings = load_settings(None)

    assert settings.vyte_api_key.get_secret_value() == VYTE_KEY
    assert settings.pipedrive_api_token.get_secret_value() == PIPEDRIVE_TOKEN


def test_settings_env_beats_credentials_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A secret set in the environment wins over a credential file."""
    (tmp_path / "BOOKINGSYNC_VYTE_API_KEY").write_text("from-file-key")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    monkeypatch.setenv("BOOKINGSYNC_VYTE_API_KEY", VYTE_KEY)
    monkeypatch.setenv("BOOKINGSYNC_PIPEDRIVE_API_TOKEN", PIPEDRIVE_TOKEN)

    settings = load_settings(None)

    assert settings.vyte_api_key.get_secret_value() == VYTE_KEY


def test_settings_repr_and_dump_hide_secrets() -> None:
    """Neither repr() nor model_dump() shows a secret value."""
    settings = load_with_credentials()

    outputs = [repr(settings), str(settings), str(settings.model_dump())]
    for text in outputs:
        assert VYTE_KEY not in text
        assert PIPEDRIVE_TOKEN not in text


def test_settings_json_dump_hides_secrets() -> None:
    """The JSON dump masks the secrets too."""
    text = load_with_credentials().model_dump_json()

    assert VYTE_KEY not in text
    assert PIPEDRIVE_TOKEN not in text


def test_settings_error_hides_invalid_secret() -> None:
    """An error about other settings never quotes a secret."""
    with pytest.raises(ConfigurationError) as caught:
        load_with_credentials(poll_interval="abc")

    assert VYTE_KEY not in str(caught.value)
    assert PIPEDRIVE_TOKEN not in str(caught.value)


# Domains and paths ------------------------------------------------------------


def test_settings_internal_domains_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A comma-separated variable becomes a list of lower-case domains."""
    monkeypatch.setenv(
        "BOOKINGSYNC_INTERNAL_DOMAINS", " OurSales.Example, @Partner.example,,x.io "
    )

    settings = load_with_credentials()

    assert settings.internal_domains == [
        "oursales.example",
        "partner.example",
        "x.io",
    ]


def test_settings_free_mail_domains_added(monkeypatch: pytest.MonkeyPatch) -> None:
    """Extra free-mail domains join the built-in list."""
    monkeypatch.setenv("BOOKINGSYNC_FREE_MAIL_DOMAINS", "Mail.Example")

    settings = load_with_credentials()

    assert "mail.example" in settings.all_free_mail_domains
    assert "gmail.com" in settings.all_free_mail_domains


def test_settings_empty_internal_domains(monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty variable means no internal domains."""
    monkeypatch.setenv("BOOKINGSYNC_INTERNAL_DOMAINS", "")

    assert load_with_credentials().internal_domains == []


def test_settings_base_url_trailing_slash_removed() -> None:
    """The base URL is stored without a trailing slash."""
    settings = load_with_credentials(pipedrive_base_url="https://acme.pipedrive.com/")

    assert settings.pipedrive_base_url == "https://acme.pipedrive.com"


def test_settings_database_in_state_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a database URL, the SQLite file lives in $STATE_DIRECTORY."""
    monkeypatch.setenv("STATE_DIRECTORY", f"{tmp_path}:/var/lib/other")

    settings = load_with_credentials()

    assert state_directory() == tmp_path
    assert settings.resolved_database_url() == f"sqlite:///{tmp_path}/bookingsync.db"


def test_settings_database_url_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An explicit database URL is used as given."""
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path))
    url = "postgresql+psycopg://sync@127.0.0.1:5432/sync"

    settings = load_with_credentials(database_url=url)

    assert settings.resolved_database_url() == url


# The command line -------------------------------------------------------------


@pytest.mark.usefixtures("restore_logging")
def test_cli_sync_without_credentials_exit_two() -> None:
    """`bookingsync sync` without credentials exits 2 naming both variables."""
    result = CliRunner().invoke(main, ["sync"])

    assert result.exit_code == 2
    assert "BOOKINGSYNC_VYTE_API_KEY" in result.output
    assert "BOOKINGSYNC_PIPEDRIVE_API_TOKEN" in result.output
