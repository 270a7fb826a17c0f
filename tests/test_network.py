"""Restricted networks: forward proxies, NO_PROXY and a private CA.

A forward proxy and the emulators run on 127.0.0.1. For TLS the test makes
its own certificate authority and server certificate with the openssl
command, then serves the Vyte emulator over HTTPS.
"""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bookingsync.app import App
from bookingsync.errors import ConfigurationError
from bookingsync.http import proxy_for
from bookingsync.sandbox.pipedrive import PipedriveEmulator
from bookingsync.sandbox.server import EmulatorServer
from bookingsync.sandbox.vyte import VyteEmulator
from bookingsync.settings import Settings
from tests.conftest import PIPEDRIVE_TOKEN, VYTE_KEY, run_cli
from tests.proxy import ForwardProxy

AddBooking = Callable[..., dict[str, Any]]
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


@pytest.fixture(autouse=True)
def _no_proxy_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Remove the developer's proxy variables, in either case."""
    for name in list(os.environ):
        if name.lower() in PROXY_VARIABLES:
            monkeypatch.delenv(name)


@pytest.fixture
def proxy() -> Iterator[ForwardProxy]:
    with ForwardProxy() as server:
        yield server


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Make a private CA and a certificate for 127.0.0.1 that it signed."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    folder = tmp_path_factory.mktemp("tls")
    files = {
        name: folder / name
        for name in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem")
    }
    extensions = folder / "server.ext"
    extensions.write_text(
        "subjectAltName=IP:127.0.0.1\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid,issuer\n"
    )
    new_key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    commands = [
        ["openssl", "req", "-x509", *new_key, "-days", "2"]
        + ["-keyout", files["ca.key"], "-out", files["ca.pem"]]
        + ["-subj", "/CN=bookingsync test CA"]
        + ["-addext", "basicConstraints=critical,CA:TRUE"]
        + ["-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        ["openssl", "req", *new_key, "-subj", "/CN=127.0.0.1"]
        + ["-keyout", files["server.key"], "-out", files["server.csr"]],
        ["openssl", "x509", "-req", "-days", "2", "-in", files["server.csr"]]
        + ["-CA", files["ca.pem"], "-CAkey", files["ca.key"], "-CAcreateserial"]
        + ["-extfile", extensions, "-out", files["server.pem"]],
    ]
    for command in commands:
        subprocess.run([str(part) for part in command], check=True, capture_output=True)
    return files


@pytest.fixture
def vyte_tls(
    vyte_emulator: VyteEmulator, tls_files: dict[str, Path]
) -> Iterator[EmulatorServer]:
    """The Vyte emulator served over HTTPS with the private CA's certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls_files["server.pem"], tls_files["server.key"])
    with EmulatorServer(vyte_emulator, ssl_context=context) as server:
        yield server


def relayed(proxy: ForwardProxy, *servers: EmulatorServer) -> int:
    """Return how many of the proxy's requests went to ``servers``."""
    prefixes = tuple(server.url for server in servers)
    return sum(
        1 for line in proxy.requests if line.split(" ", 1)[1].startswith(prefixes)
    )


# Choosing the proxy ------------------------------------------------------


@pytest.mark.parametrize(
    ("environment", "url", "expected"),
    [
        ({"HTTPS_PROXY": "http://p:3128"}, "https://api.vyte.in", "http://p:3128"),
        ({"HTTPS_PROXY": "http://p:3128"}, "http://127.0.0.1:80", None),
        ({"HTTP_PROXY": "http://p:3128"}, "http://127.0.0.1:80", "http://p:3128"),
        ({"ALL_PROXY": "http://p:3128"}, "https://api.vyte.in", "http://p:3128"),
        ({"https_proxy": "p:3128"}, "https://api.vyte.in", "http://p:3128"),
        (
            {"HTTPS_PROXY": "http://p:3128", "NO_PROXY": "vyte.in"},
            "https://api.vyte.in",
            None,
        ),
        (
            {"HTTPS_PROXY": "http://p:3128", "NO_PROXY": "pipedrive.com"},
            "https://api.vyte.in",
            "http://p:3128",
        ),
        ({}, "https://api.vyte.in", None),
    ],
    ids=[
        "https-target",
        "https-proxy-not-for-http",
        "http-target",
        "all-proxy",
        "no-scheme-means-http",
        "no-proxy-suffix",
        "no-proxy-other-host",
        "none",
    ],
)
def test_proxy_for_reads_environment(
    monkeypatch: pytest.MonkeyPatch,
    environment: dict[str, str],
    url: str,
    expected: str | None,
) -> None:
    for name, value in environment.items():
        monkeypatch.setenv(name, value)

    assert proxy_for(url) == expected


def test_proxy_for_setting_wins_over_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://env:3128")
    monkeypatch.setenv("NO_PROXY", "*")

    assert proxy_for("https://api.vyte.in", "http://set:8080") == "http://set:8080"


def test_proxy_setting_invalid_scheme_rejected(
    make_settings: Callable[..., Settings],
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        make_settings(https_proxy="socks5://127.0.0.1:1080")

    assert "BOOKINGSYNC_HTTPS_PROXY is invalid" in str(caught.value)


def test_environment_socks_proxy_is_configuration_error(
    monkeypatch: pytest.MonkeyPatch, make_app: Callable[..., App]
) -> None:
    """An ALL_PROXY that httpx cannot use stops start-up with a clear message."""
    monkeypatch.setenv("ALL_PROXY", "socks5://127.0.0.1:1080")

    with pytest.raises(ConfigurationError) as caught:
        make_app()

    assert "socks5://127.0.0.1:1080" in str(caught.value)
    assert "HTTPS_PROXY" in str(caught.value)


# Syncing through a proxy -------------------------------------------------


def test_environment_proxy_carries_every_request(
    cli_env: dict[str, str],
    proxy: ForwardProxy,
    vyte: EmulatorServer,
    pipedrive: EmulatorServer,
    add_booking: AddBooking,
) -> None:
    """With HTTP_PROXY set, every request of a CLI sync goes through the proxy.

    The client hands httpx a transport of its own, with which httpx ignores
    the proxy variables, so this checks that bookingsync reads them itself.
    """
    add_booking()
    cli_env["HTTP_PROXY"] = proxy.url

    result = run_cli(cli_env, "sync")

    assert result.returncode == 0, result.stderr
    served = len(vyte.requests) + len(pipedrive.requests)
    assert served > 0
    assert len(proxy.requests) == served
    assert relayed(proxy, vyte, pipedrive) == served


def test_no_proxy_bypasses_proxy(
    monkeypatch: pytest.MonkeyPatch,
    proxy: ForwardProxy,
    make_app: Callable[..., App],
    add_booking: AddBooking,
    pipedrive_emulator: PipedriveEmulator,
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    add_booking()

    report = make_app().sync()

    assert report.ok
    assert len(pipedrive_emulator.live("activities")) == 1
    assert proxy.requests == []


def test_proxy_setting_overrides_no_proxy(
    monkeypatch: pytest.MonkeyPatch,
    proxy: ForwardProxy,
    make_app: Callable[..., App],
    vyte: EmulatorServer,
    pipedrive: EmulatorServer,
    add_booking: AddBooking,
) -> None:
    """BOOKINGSYNC_HTTPS_PROXY sends both APIs' requests through the proxy."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    add_booking()

    report = make_app(https_proxy=proxy.url).sync()

    assert report.ok
    served = len(vyte.requests) + len(pipedrive.requests)
    assert served > 0
    assert relayed(proxy, vyte, pipedrive) == served


def test_proxy_credentials_sent_and_not_logged(
    cli_env: dict[str, str],
    vyte: EmulatorServer,
    add_booking: AddBooking,
) -> None:
    """Credentials in the proxy URL authenticate, and DEBUG logs mask them."""
    password = "proxy-pass-93e1"
    add_booking()
    with ForwardProxy(credentials=("syncer", password)) as proxy:
        cli_env["BOOKINGSYNC_HTTPS_PROXY"] = proxy.url.replace(
            "http://", f"http://syncer:{password}@"
        )
        result = run_cli(cli_env, "--log-level", "DEBUG", "sync")

    assert result.returncode == 0, result.stderr
    assert proxy.rejected == 0
    assert relayed(proxy, vyte) == len(vyte.requests)
    assert f"requests go through the proxy {proxy.url}" in result.stderr
    assert password not in result.stderr + result.stdout


def test_proxy_never_sees_token_in_url(
    cli_env: dict[str, str], proxy: ForwardProxy, add_booking: AddBooking
) -> None:
    """The Pipedrive token and the Vyte key travel in headers, never in URLs."""
    add_booking()
    cli_env["HTTP_PROXY"] = proxy.url

    result = run_cli(cli_env, "sync", "--full")

    assert result.returncode == 0, result.stderr
    assert proxy.requests
    for line in proxy.requests:
        assert PIPEDRIVE_TOKEN not in line
        assert VYTE_KEY not in line


# TLS with a private certificate authority ---------------------------------


def test_private_ca_missing_fails_with_tls_error(
    cli_env: dict[str, str], vyte_tls: EmulatorServer
) -> None:
    """Without the CA, `check` reports a certificate error and Vyte gets no request."""
    cli_env["BOOKINGSYNC_VYTE_BASE_URL"] = vyte_tls.url

    result = run_cli(cli_env, "check")

    assert result.returncode == 4, result.stdout + result.stderr
    assert "Vyte: FAILED" in result.stdout
    assert "CERTIFICATE_VERIFY_FAILED" in result.stdout
    assert "BOOKINGSYNC_CA_BUNDLE" in result.stdout
    assert "retrying" not in result.stderr
    assert vyte_tls.requests == []


def test_private_ca_configured_sync_succeeds(
    cli_env: dict[str, str],
    vyte_tls: EmulatorServer,
    tls_files: dict[str, Path],
    add_booking: AddBooking,
    pipedrive_emulator: PipedriveEmulator,
) -> None:
    add_booking()
    cli_env["BOOKINGSYNC_VYTE_BASE_URL"] = vyte_tls.url
    cli_env["BOOKINGSYNC_CA_BUNDLE"] = str(tls_files["ca.pem"])

    result = run_cli(cli_env, "sync")

    assert result.returncode == 0, result.stderr
    assert vyte_tls.requests
    assert len(pipedrive_emulator.live("activities")) == 1


def test_private_ca_through_proxy_tunnel(
    cli_env: dict[str, str],
    proxy: ForwardProxy,
    vyte_tls: EmulatorServer,
    pipedrive: EmulatorServer,
    tls_files: dict[str, Path],
    add_booking: AddBooking,
) -> None:
    """HTTPS goes through a CONNECT tunnel, HTTP as absolute-URI requests."""
    add_booking()
    cli_env["BOOKINGSYNC_VYTE_BASE_URL"] = vyte_tls.url
    cli_env["BOOKINGSYNC_CA_BUNDLE"] = str(tls_files["ca.pem"])
    cli_env["HTTPS_PROXY"] = proxy.url
    cli_env["HTTP_PROXY"] = proxy.url

    result = run_cli(cli_env, "sync")

    assert result.returncode == 0, result.stderr
    tunnel = f"CONNECT {vyte_tls.url.removeprefix('https://')}"
    assert tunnel in proxy.requests
    assert relayed(proxy, pipedrive) == len(pipedrive.requests)
    for line in proxy.requests:
        assert PIPEDRIVE_TOKEN not in line


@pytest.mark.parametrize(
    ("content", "problem"),
    [(None, "is not an existing file"), ("not a certificate", "is not a PEM file")],
    ids=["missing", "not-pem"],
)
def test_ca_bundle_invalid_is_configuration_error(
    cli_env: dict[str, str], tmp_path: Path, content: str | None, problem: str
) -> None:
    bundle = tmp_path / "ca.pem"
    if content is not None:
        bundle.write_text(content)
    cli_env["BOOKINGSYNC_CA_BUNDLE"] = str(bundle)

    result = run_cli(cli_env, "check")

    assert result.returncode == 2
    assert "BOOKINGSYNC_CA_BUNDLE is invalid" in result.stderr
    assert problem in result.stderr
