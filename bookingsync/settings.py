"""Validated settings, read from the environment and an optional TOML file.

Every setting is a ``BOOKINGSYNC_<NAME>`` environment variable and may also be
written in the TOML file as ``<name> = ...`` (lower case, no prefix). The
environment wins over the file. Secrets are ``SecretStr`` so that ``repr()``,
logs and tracebacks show them masked.
"""

from __future__ import annotations

import difflib
import os
import ssl
import tomllib
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import platformdirs
from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from bookingsync.errors import ConfigurationError

DEFAULT_CONFIG_FILE = Path("/etc/bookingsync/bookingsync.toml")
SYSTEM_STATE_DIR = Path("/var/lib/bookingsync")
ENV_PREFIX = "BOOKINGSYNC_"

# Free-mail and ISP domains whose users share no company. Bookers from these
# domains get no organization unless their booking names a company.
FREE_MAIL_DOMAINS = frozenset(
    {
        "gmail.com", "googlemail.com", "outlook.com", "hotmail.com", "hotmail.fr",
        "hotmail.co.uk", "live.com", "live.fr", "msn.com", "yahoo.com", "yahoo.fr",
        "yahoo.co.uk", "yahoo.de", "ymail.com", "icloud.com", "me.com", "mac.com",
        "aol.com", "gmx.com", "gmx.de", "gmx.net", "gmx.fr", "gmx.at", "gmx.ch",
        "web.de", "t-online.de", "freenet.de", "orange.fr", "wanadoo.fr", "free.fr",
        "sfr.fr", "laposte.net", "neuf.fr", "bbox.fr", "libero.it", "virgilio.it",
        "tiscali.it", "proton.me", "protonmail.com", "pm.me", "tutanota.com",
        "zoho.com", "yandex.com", "yandex.ru", "mail.ru", "qq.com", "163.com",
        "126.com", "naver.com", "seznam.cz", "wp.pl", "o2.pl", "interia.pl",
        "btinternet.com", "sky.com", "comcast.net", "verizon.net", "att.net",
        "bigpond.com", "fastmail.com", "hey.com", "mail.com", "email.com",
    }
)  # fmt: skip


class CancellationMode(StrEnum):
    """The treatment of a cancelled booking's Pipedrive activity."""

    MARK = "mark"
    DELETE = "delete"


class OrganizationNaming(StrEnum):
    """The naming rule for an organization when the booking names no company."""

    DOMAIN = "domain"
    CLEANED = "cleaned"


class LogFormat(StrEnum):
    TEXT = "text"
    JSON = "json"


class Settings(BaseSettings):
    """Every setting of bookingsync, validated together at start-up."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        # Unknown BOOKINGSYNC_* variables are ignored (test tooling sets some);
        # unknown keys in the TOML file are reported by load_settings().
        extra="ignore",
        validate_default=True,
    )

    vyte_api_key: SecretStr = Field(description="Vyte organization API key.")
    vyte_base_url: str = "https://api.vyte.in"
    pipedrive_api_token: SecretStr = Field(description="Pipedrive API token.")
    pipedrive_base_url: str = "https://api.pipedrive.com"
    database_url: str | None = None

    poll_interval: int = Field(60, ge=5, description="Seconds between polls.")
    full_rescan_interval: int = Field(
        3600, ge=60, description="Seconds between full rescans."
    )
    lookback_days: int = Field(30, ge=0)
    include_all_events: bool = False
    # NoDecode: the environment gives a comma-separated string, not JSON.
    internal_domains: Annotated[list[str], NoDecode] = Field(default_factory=list)
    free_mail_domains: Annotated[list[str], NoDecode] = Field(default_factory=list)
    max_persons_per_booking: int = Field(10, ge=1, le=100)

    create_organizations: bool = True
    organization_naming: OrganizationNaming = OrganizationNaming.DOMAIN
    create_deals: bool = True
    deal_title_template: str = "{organization}"
    pipeline_id: int | None = None
    stage_id: int | None = None
    activity_subject_template: str = "{title}"
    activity_type: str = "meeting"
    cancellation_mode: CancellationMode = CancellationMode.MARK
    remote_deletions_final: bool = False
    snapshot_retention_days: int = Field(
        365,
        ge=1,
        description="Days after a booking ends before its snapshot is pruned; "
        "never fewer than lookback_days + 1.",
    )

    vyte_page_limit: int = Field(1000, ge=1, le=100_000)
    pipedrive_burst_limit: int = Field(
        20, ge=1, description="Requests Pipedrive allows per 2-second window."
    )
    http_connect_timeout: float = Field(10.0, gt=0)
    http_read_timeout: float = Field(30.0, gt=0)
    http_write_timeout: float = Field(30.0, gt=0)
    http_pool_timeout: float = Field(10.0, gt=0)
    run_deadline: float = Field(
        1800.0, gt=0, description="Seconds after which a run stops taking bookings."
    )
    log_level: str = "INFO"
    log_format: LogFormat = LogFormat.TEXT

    # Restricted networks and monitoring. The proxy setting wins over the
    # HTTPS_PROXY, HTTP_PROXY, ALL_PROXY and NO_PROXY environment variables.
    https_proxy: str | None = None
    ca_bundle: Path | None = None
    metrics_file: Path | None = None

    @field_validator("https_proxy", "ca_bundle", "metrics_file", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("https_proxy")
    @classmethod
    def _check_proxy(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                "is not an http:// or https:// proxy URL "
                "(for example http://proxy.example:3128)"
            )
        return value

    @field_validator("ca_bundle")
    @classmethod
    def _check_ca_bundle(cls, value: Path | None) -> Path | None:
        if value is None:
            return None
        if not value.is_file():
            raise ValueError(f"{str(value)!r} is not an existing file")
        try:
            ssl.create_default_context(cafile=str(value))
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(
                f"{str(value)!r} is not a PEM file of CA certificates ({exc})"
            ) from None
        return value

    @field_validator("metrics_file")
    @classmethod
    def _check_metrics_file(cls, value: Path | None) -> Path | None:
        if value is None:
            return None
        if value.suffix != ".prom":
            raise ValueError(
                f"{str(value)!r} must end in .prom, the only files that "
                "node_exporter's textfile collector reads"
            )
        if not value.parent.is_dir():
            raise ValueError(f"the directory of {str(value)!r} does not exist")
        return value

    @field_validator("vyte_base_url", "pipedrive_base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        if not value.startswith(("https://", "http://")):
            raise ValueError(f"{value!r} is not an http(s) URL")
        host = value.split("://", 1)[1].split("/", 1)[0].rsplit("@", 1)[-1]
        if not host or any(char.isspace() for char in value):
            raise ValueError(f"{value!r} has no valid host name")
        if "?" in value or "#" in value:
            raise ValueError(f"{value!r} must not contain a query or fragment")
        return value.rstrip("/")

    @field_validator("internal_domains", "free_mail_domains", mode="before")
    @classmethod
    def _split_domains(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part for part in value.replace(",", " ").split() if part]
        if isinstance(value, list):
            return [str(part).strip().lower().lstrip("@") for part in value]
        return value

    @field_validator("vyte_api_key", "pipedrive_api_token")
    @classmethod
    def _check_secret(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise ValueError("is empty")
        return value

    @field_validator("log_level")
    @classmethod
    def _check_log_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError(f"{value!r} is not one of DEBUG, INFO, WARNING, ERROR")
        return level

    @field_validator("deal_title_template", "activity_subject_template")
    @classmethod
    def _check_template(cls, template: str) -> str:
        try:
            template.format(**TEMPLATE_EXAMPLE)
        except KeyError as exc:
            problem = f"uses the unknown placeholder {{{exc.args[0]}}}"
        except (IndexError, ValueError, AttributeError, TypeError) as exc:
            problem = f"is not a valid template ({exc})"
        else:
            return template
        known = ", ".join("{" + key + "}" for key in TEMPLATE_EXAMPLE)
        raise ValueError(f"{template!r} {problem}; use only the placeholders {known}")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [
            init_settings,
            env_settings,
            CredentialsSource(settings_cls),
        ]
        config_file = _CONFIG_FILE_IN_USE.get("path")
        if config_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, config_file))
        return tuple(sources)

    @property
    def effective_retention_days(self) -> int:
        """Return the retention, kept longer than the lookback window.

        A snapshot pruned inside the window would make its booking look new.
        """
        return max(self.snapshot_retention_days, self.lookback_days + 1)

    @property
    def all_free_mail_domains(self) -> frozenset[str]:
        return FREE_MAIL_DOMAINS | frozenset(self.free_mail_domains)

    def resolved_database_url(self) -> str:
        """Return the database URL, defaulting to a SQLite file in the state dir."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{state_directory() / 'bookingsync.db'}"


# Values used to check templates at start-up; the keys are the placeholders.
TEMPLATE_EXAMPLE = {
    "title": "Demo",
    "organization": "ACME",
    "person": "Jane Roe",
    "email": "jane@acme.example",
    "host": "John Doe",
}

_CONFIG_FILE_IN_USE: dict[str, Path | None] = {}


class CredentialsSource(PydanticBaseSettingsSource):
    """Read secrets from systemd's ``$CREDENTIALS_DIRECTORY`` when it is set.

    A file named like the environment variable (``BOOKINGSYNC_VYTE_API_KEY``)
    or like the setting (``vyte_api_key``) supplies that setting.
    """

    SECRET_FIELDS = ("vyte_api_key", "pipedrive_api_token")

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        directory = os.environ.get("CREDENTIALS_DIRECTORY")
        if not directory:
            return {}
        values: dict[str, Any] = {}
        for name in self.SECRET_FIELDS:
            for candidate in (ENV_PREFIX + name.upper(), name):
                path = Path(directory) / candidate
                if path.is_file():
                    values[name] = path.read_text(encoding="utf-8").strip()
                    break
        return values


def state_directory() -> Path:
    """Return the state directory the service and the CLI both use.

    ``$STATE_DIRECTORY`` under systemd, else ``/var/lib/bookingsync`` when it
    exists and is writable, else the user's data directory.
    """
    from_systemd = os.environ.get("STATE_DIRECTORY")
    if from_systemd:
        return Path(from_systemd.split(":")[0])
    if SYSTEM_STATE_DIR.is_dir() and os.access(SYSTEM_STATE_DIR, os.W_OK):
        return SYSTEM_STATE_DIR
    return Path(platformdirs.user_data_dir("bookingsync"))


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings, raising ``ConfigurationError`` listing every problem.

    ``config_file`` defaults to ``/etc/bookingsync/bookingsync.toml`` when that
    file exists; a file given explicitly must exist.
    """
    if config_file is None and DEFAULT_CONFIG_FILE.is_file():
        config_file = DEFAULT_CONFIG_FILE
    if config_file is not None and (not config_file.exists() or config_file.is_dir()):
        raise ConfigurationError(
            [f"config file {str(config_file)!r} does not exist; fix --config"]
        )
    _CONFIG_FILE_IN_USE["path"] = config_file
    problems = [
        _unknown_key_problem(key, config_file)
        for key in (_unknown_file_keys(config_file) if config_file else [])
    ]
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        problems.extend(_describe_problems(exc, config_file))
    except ValueError as exc:  # A TOML syntax error surfaces as a ValueError.
        problems.append(f"config file {str(config_file)!r}: {exc}")
    if problems:
        raise ConfigurationError(problems)
    return settings


def _unknown_key_problem(key: str, config_file: Path | None) -> str:
    close = difflib.get_close_matches(key, Settings.model_fields, n=1)
    advice = f"did you mean {close[0]!r}?" if close else "remove it or fix its name"
    return f"unknown setting {key!r} in {config_file}: {advice}"


def _unknown_file_keys(config_file: Path) -> list[str]:
    try:
        with config_file.open("rb") as handle:
            document = tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError([f"config file {str(config_file)!r}: {exc}"]) from None
    return sorted(set(document) - set(Settings.model_fields))


def _describe_problems(exc: ValidationError, config_file: Path | None) -> list[str]:
    file_name = config_file or DEFAULT_CONFIG_FILE
    problems = []
    for error in exc.errors(include_input=False):
        name = ".".join(str(part) for part in error["loc"]) or "settings"
        variable = ENV_PREFIX + name.upper()
        hint = f"set {variable} or `{name} = ...` in {file_name}"
        if name in CredentialsSource.SECRET_FIELDS:
            hint += f", or a systemd credential named {variable}"
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "missing":
            problems.append(f"{variable} is missing: {hint}")
        else:
            problems.append(f"{variable} is invalid: {message}; {hint}")
    return problems
