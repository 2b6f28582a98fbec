"""A private CA and the certificates of the simulated fleet and the control plane.

``init_certs`` writes, into one directory: ``ca.crt``/``ca.key`` (the CA), ``control.crt``/
``control.key`` (the control plane's client certificate, clientAuth), ``agent.crt``/
``agent.key`` (one server certificate, serverAuth, valid for 127.0.0.1, ``localhost`` and every
simulated agent address) and ``api.crt``/``api.key`` (the API's server certificate, serverAuth,
valid for 127.0.0.1 and ``localhost``). Keys are EC P-256, PEM, mode 0600. A second
``init_certs`` into another directory makes an unrelated CA, which tests use as the foreign
one.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleetwave.agent.protocol import agent_hosts

VALIDITY = datetime.timedelta(days=825)
CLOCK_SKEW = datetime.timedelta(hours=1)


@attrs.frozen
class CertPaths:
    directory: Path
    ca_cert: Path
    ca_key: Path
    control_cert: Path
    control_key: Path
    agent_cert: Path
    agent_key: Path
    api_cert: Path
    api_key: Path

    @classmethod
    def in_directory(cls, directory: Path) -> CertPaths:
        """Where ``init_certs`` writes (or wrote) into ``directory``, as absolute paths."""
        base = Path(directory).absolute()
        return cls(
            directory=base,
            ca_cert=base / "ca.crt",
            ca_key=base / "ca.key",
            control_cert=base / "control.crt",
            control_key=base / "control.key",
            agent_cert=base / "agent.crt",
            agent_key=base / "agent.key",
            api_cert=base / "api.crt",
            api_key=base / "api.key",
        )


def init_certs(directory: Path, *, agents: int = 254, first_host: str = "127.0.0.2") -> CertPaths:
    """Write a fresh CA, control client certificate and agent server certificate."""
    if agents < 0:
        raise ValueError(f"agents must be >= 0, got {agents}")
    paths = CertPaths.in_directory(directory)
    paths.directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fleetwave"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"fleetwave agent CA {os.urandom(4).hex()}"),
        ]
    )
    ca_cert = (
        _builder(ca_name, ca_name, ca_key.public_key(), now)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    control_key, control_cert = _leaf(
        ca_cert,
        ca_key,
        now,
        common_name="fleetwave-control",
        usage=ExtendedKeyUsageOID.CLIENT_AUTH,
        names=[x509.DNSName("fleetwave-control")],
    )
    ips = ["127.0.0.1", *agent_hosts(agents, first_host)]
    names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in dict.fromkeys(ips)]
    agent_key, agent_cert = _leaf(
        ca_cert,
        ca_key,
        now,
        common_name="fleetwave-agent",
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        names=names,
    )

    api_key, api_cert = _leaf(
        ca_cert,
        ca_key,
        now,
        common_name="fleetwave-api",
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        names=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )

    _write_cert(paths.ca_cert, ca_cert)
    _write_key(paths.ca_key, ca_key)
    _write_cert(paths.control_cert, control_cert)
    _write_key(paths.control_key, control_key)
    _write_cert(paths.agent_cert, agent_cert)
    _write_key(paths.agent_key, agent_key)
    _write_cert(paths.api_cert, api_cert)
    _write_key(paths.api_key, api_key)
    return paths


def mtls_env_lines(paths: CertPaths) -> list[str]:
    """The environment a daemon needs to call the agents with these certificates."""
    return [
        "MTLS_ENABLED=1",
        f"CONTROL_CERT={paths.control_cert.absolute()}",
        f"CONTROL_KEY={paths.control_key.absolute()}",
        f"CONTROL_CA={paths.ca_cert.absolute()}",
    ]


def api_env_lines(paths: CertPaths) -> list[str]:
    """The environment of a daemon serving its API over HTTPS with these certificates, and
    of a client verifying it."""
    return [
        f"FLEETWAVE_API_TLS_CERT={paths.api_cert.absolute()}",
        f"FLEETWAVE_API_TLS_KEY={paths.api_key.absolute()}",
        f"FLEETWAVE_API_CA={paths.ca_cert.absolute()}",
    ]


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    now: datetime.datetime,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + VALIDITY)
    )


def _leaf(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    now: datetime.datetime,
    *,
    common_name: str,
    usage: x509.ObjectIdentifier,
    names: list[x509.GeneralName],
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fleetwave"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        _builder(subject, ca_cert.subject, key.public_key(), now)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # Created 0600 so the key is never readable by others, not even for a moment.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        os.fchmod(handle.fileno(), 0o600)
        handle.write(pem)
