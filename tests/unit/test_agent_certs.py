"""The private CA and the certificates of the control plane and the simulated agents."""

from __future__ import annotations

import ipaddress
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from fleetwave.agent.certs import CertPaths, api_env_lines, init_certs, mtls_env_lines
from fleetwave.agent.client import client_ssl_context
from fleetwave.config import SettingsError, load_settings


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertPaths:
    return init_certs(tmp_path_factory.mktemp("certs"), agents=300)


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_all_eight_files_are_written(certs: CertPaths) -> None:
    names = {p.name for p in certs.directory.iterdir()}
    assert names == {
        "ca.crt",
        "ca.key",
        "control.crt",
        "control.key",
        "agent.crt",
        "agent.key",
        "api.crt",
        "api.key",
    }


def test_keys_are_readable_by_the_owner_only(certs: CertPaths) -> None:
    for key in (certs.ca_key, certs.control_key, certs.agent_key, certs.api_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_agent_certificate_covers_loopback_and_every_simulated_host(certs: CertPaths) -> None:
    sans = _load(certs.agent_cert).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    ips = {str(ip) for ip in sans.value.get_values_for_type(x509.IPAddress)}
    assert {"127.0.0.1", "127.0.0.2", "127.0.0.255", "127.0.1.0", "127.0.1.45"} <= ips
    assert "127.0.1.46" not in ips
    assert len(ips) == 301
    assert sans.value.get_values_for_type(x509.DNSName) == ["localhost"]


def test_usages_are_server_for_the_agent_and_client_for_the_control_plane(
    certs: CertPaths,
) -> None:
    def usage(path: Path) -> list[x509.ObjectIdentifier]:
        return list(_load(path).extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)

    assert usage(certs.agent_cert) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert usage(certs.control_cert) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    ca = _load(certs.ca_cert).extensions.get_extension_for_class(x509.BasicConstraints).value
    assert ca.ca


def test_ca_signs_every_leaf_certificate(certs: CertPaths) -> None:
    ca = _load(certs.ca_cert)
    _load(certs.agent_cert).verify_directly_issued_by(ca)
    _load(certs.control_cert).verify_directly_issued_by(ca)
    _load(certs.api_cert).verify_directly_issued_by(ca)


def test_api_certificate_is_a_server_certificate_for_127_0_0_1_and_localhost(
    certs: CertPaths,
) -> None:
    api = _load(certs.api_cert)
    sans = api.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    usage = api.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]


def test_api_env_lines_name_the_api_certificate_key_and_ca(certs: CertPaths) -> None:
    environ = dict(line.split("=", 1) for line in api_env_lines(certs))
    assert environ == {
        "FLEETWAVE_API_TLS_CERT": str(certs.api_cert),
        "FLEETWAVE_API_TLS_KEY": str(certs.api_key),
        "FLEETWAVE_API_CA": str(certs.ca_cert),
    }


def test_a_second_directory_gets_an_unrelated_ca(certs: CertPaths, tmp_path: Path) -> None:
    foreign = init_certs(tmp_path, agents=1)
    ours, theirs = _load(certs.ca_cert), _load(foreign.ca_cert)
    assert ours.public_key() != theirs.public_key()
    with pytest.raises(ValueError, match="does not match"):
        _load(foreign.agent_cert).verify_directly_issued_by(ours)


def test_env_lines_configure_settings_that_pass_the_mtls_check(certs: CertPaths) -> None:
    lines = mtls_env_lines(certs)
    assert lines[0] == "MTLS_ENABLED=1"
    environ = dict(line.split("=", 1) for line in lines)
    assert all(Path(environ[name]).is_absolute() for name in ("CONTROL_CERT", "CONTROL_KEY"))
    settings = load_settings(environ)
    assert settings.require_mtls() == (
        str(certs.control_cert),
        str(certs.control_key),
        str(certs.ca_cert),
    )


def test_client_context_requires_tls12_and_checks_hostnames(certs: CertPaths) -> None:
    context = client_ssl_context(
        str(certs.control_cert), str(certs.control_key), str(certs.ca_cert)
    )
    assert context.minimum_version is ssl.TLSVersion.TLSv1_2
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert context.check_hostname


def test_client_context_names_a_key_that_does_not_match(certs: CertPaths) -> None:
    with pytest.raises(SettingsError, match="CONTROL_CERT/CONTROL_KEY") as caught:
        client_ssl_context(str(certs.control_cert), str(certs.agent_key), str(certs.ca_cert))
    assert "PRIVATE KEY" not in str(caught.value)


def test_client_context_names_an_unusable_ca(certs: CertPaths) -> None:
    with pytest.raises(SettingsError, match="CONTROL_CA"):
        client_ssl_context(str(certs.control_cert), str(certs.control_key), str(certs.ca_key))


def test_hosts_follow_first_host(tmp_path: Path) -> None:
    paths = init_certs(tmp_path, agents=2, first_host="127.0.5.9")
    sans = _load(paths.agent_cert).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    ips = set(sans.value.get_values_for_type(x509.IPAddress))
    assert ips == {ipaddress.ip_address(h) for h in ("127.0.0.1", "127.0.5.9", "127.0.5.10")}
