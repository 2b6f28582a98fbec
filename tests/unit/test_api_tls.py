"""How the API may be exposed: HTTPS settings checked at start, plain HTTP only on loopback
unless FLEETWAVE_API_INSECURE=1."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetwave.agent.certs import CertPaths, init_certs
from fleetwave.config import SettingsError, load_settings
from fleetwave.config.api_tls import ApiTls, api_tls, is_loopback


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertPaths:
    return init_certs(tmp_path_factory.mktemp("api-certs"), agents=1)


def tls_env(certs: CertPaths, **more: str) -> dict[str, str]:
    return {
        "FLEETWAVE_API_TLS_CERT": str(certs.api_cert),
        "FLEETWAVE_API_TLS_KEY": str(certs.api_key),
        **more,
    }


@pytest.mark.parametrize(
    "bind", ["127.0.0.1:8080", "127.9.8.7:1", "[::1]:8080", "localhost:8080", "LOCALHOST:1"]
)
def test_loopback_binds(bind: str) -> None:
    assert is_loopback(bind)
    assert api_tls(load_settings({"FLEETWAVE_API_BIND": bind})) is None


@pytest.mark.parametrize(
    "bind", ["0.0.0.0:8080", "[::]:8080", "10.0.0.5:8080", "api.internal:443", "128.0.0.1:80"]
)
def test_a_plain_http_bind_beyond_loopback_is_refused_naming_the_way_to_accept_it(
    bind: str,
) -> None:
    assert not is_loopback(bind)
    with pytest.raises(SettingsError) as refused:
        api_tls(load_settings({"FLEETWAVE_API_BIND": bind}))

    message = str(refused.value)
    assert message.startswith(f"setting FLEETWAVE_API_BIND: {bind} is reachable beyond")
    assert "FLEETWAVE_API_TLS_CERT" in message and "FLEETWAVE_API_INSECURE=1" in message
    assert "\n" not in message


def test_insecure_accepts_plain_http_beyond_loopback() -> None:
    env = {"FLEETWAVE_API_BIND": "0.0.0.0:8080", "FLEETWAVE_API_INSECURE": "1"}
    assert api_tls(load_settings(env)) is None


def test_tls_settings_give_the_certificate_key_and_client_ca(certs: CertPaths) -> None:
    assert api_tls(load_settings(tls_env(certs, FLEETWAVE_API_BIND="0.0.0.0:443"))) == ApiTls(
        str(certs.api_cert), str(certs.api_key)
    )
    with_ca = load_settings(tls_env(certs, FLEETWAVE_API_CLIENT_CA=str(certs.ca_cert)))
    assert api_tls(with_ca) == ApiTls(str(certs.api_cert), str(certs.api_key), str(certs.ca_cert))


def test_a_certificate_without_its_key_is_refused(certs: CertPaths) -> None:
    with pytest.raises(SettingsError, match="FLEETWAVE_API_TLS_KEY: is required when"):
        api_tls(load_settings({"FLEETWAVE_API_TLS_CERT": str(certs.api_cert)}))
    with pytest.raises(SettingsError, match="FLEETWAVE_API_TLS_CERT: is required when"):
        api_tls(load_settings({"FLEETWAVE_API_TLS_KEY": str(certs.api_key)}))


def test_a_client_ca_without_https_is_refused(certs: CertPaths) -> None:
    with pytest.raises(SettingsError, match="FLEETWAVE_API_CLIENT_CA: client certificates need"):
        api_tls(load_settings({"FLEETWAVE_API_CLIENT_CA": str(certs.ca_cert)}))


def test_missing_files_are_named(certs: CertPaths, tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.pem")
    with pytest.raises(SettingsError, match=f"FLEETWAVE_API_TLS_KEY: file {missing} does not"):
        api_tls(load_settings(tls_env(certs, FLEETWAVE_API_TLS_KEY=missing)))
    with pytest.raises(SettingsError, match="FLEETWAVE_API_CLIENT_CA: file"):
        api_tls(load_settings(tls_env(certs, FLEETWAVE_API_CLIENT_CA=missing)))


def test_a_key_that_is_not_the_certificates_is_refused_at_start(
    certs: CertPaths, tmp_path: Path
) -> None:
    other = init_certs(tmp_path / "other", agents=1)
    with pytest.raises(SettingsError, match="FLEETWAVE_API_TLS_CERT: cannot load"):
        api_tls(load_settings(tls_env(certs, FLEETWAVE_API_TLS_KEY=str(other.api_key))))


def test_a_client_ca_that_is_not_a_certificate_is_refused(certs: CertPaths) -> None:
    with pytest.raises(SettingsError, match=r"FLEETWAVE_API_CLIENT_CA: .* is not a PEM CA"):
        api_tls(load_settings(tls_env(certs, FLEETWAVE_API_CLIENT_CA=str(certs.api_key))))
