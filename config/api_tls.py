"""How the API is exposed: HTTPS from FLEETWAVE_API_TLS_CERT / _KEY (client certificates
required when FLEETWAVE_API_CLIENT_CA is set), and never plain HTTP beyond loopback unless
FLEETWAVE_API_INSECURE=1 says so.

``api_tls`` checks it all when the daemon starts, so a daemon that would hand out tokens in
clear on a network, or could not load its certificate, stops at once with one line naming
the setting (exit 2) instead of at the first request.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
from pathlib import Path

import attrs

from fleetwave.config.settings import Settings, SettingsError


@attrs.frozen
class ApiTls:
    """The API's certificate and key, and the CA its clients' certificates must come from
    (None: no client certificate asked for)."""

    cert: str
    key: str
    client_ca: str | None = None


def is_loopback(bind: str) -> bool:
    """True when the HOST of ``bind`` (HOST:PORT) is in 127.0.0.0/8, ::1, or ``localhost``."""
    host = bind.rpartition(":")[0].strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def api_tls(settings: Settings) -> ApiTls | None:
    """The API's TLS, checked (files readable, certificate and key loadable); None for plain
    HTTP, which only a loopback bind or ``api_insecure`` allows. Raises SettingsError."""
    cert, key, client_ca = settings.api_tls_cert, settings.api_tls_key, settings.api_client_ca
    cert_name, key_name = Settings.env_name("api_tls_cert"), Settings.env_name("api_tls_key")
    if (cert is None) != (key is None):
        given, missing = (cert_name, key_name) if key is None else (key_name, cert_name)
        raise SettingsError(missing, f"is required when {given} is set (a PEM file path)")
    if cert is None or key is None:
        if client_ca is not None:
            raise SettingsError(
                Settings.env_name("api_client_ca"),
                f"client certificates need HTTPS: set {cert_name} and {key_name} too",
            )
        if not is_loopback(settings.api_bind) and not settings.api_insecure:
            raise SettingsError(
                Settings.env_name("api_bind"),
                f"{settings.api_bind} is reachable beyond this machine and the API has no TLS, "
                f"so tokens would cross the network in clear: set {cert_name} and {key_name}, "
                f"or {Settings.env_name('api_insecure')}=1 to serve plain HTTP anyway",
            )
        return None
    for attribute in ("api_tls_cert", "api_tls_key", "api_client_ca"):
        _readable(attribute, getattr(settings, attribute))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (ssl.SSLError, ValueError) as error:
        raise SettingsError(
            cert_name, f"cannot load {cert} with the key {key}: {_reason(error)}"
        ) from None
    if client_ca is not None:
        try:
            context.load_verify_locations(client_ca)
        except ssl.SSLError as error:
            raise SettingsError(
                Settings.env_name("api_client_ca"),
                f"{client_ca} is not a PEM CA certificate: {_reason(error)}",
            ) from None
    return ApiTls(cert, key, client_ca)


def _readable(attribute: str, value: str | None) -> None:
    if value is None:
        return
    name = Settings.env_name(attribute)
    path = Path(value)
    if not path.is_file():
        raise SettingsError(name, f"file {value} does not exist")
    if not os.access(path, os.R_OK):
        raise SettingsError(name, f"file {value} is not readable")


def _reason(error: Exception) -> str:
    if isinstance(error, ssl.SSLError) and error.reason:
        return str(error.reason)
    return str(error) or type(error).__name__
