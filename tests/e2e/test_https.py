"""The API over HTTPS, end to end: ``fleetwave serve`` with FLEETWAVE_API_TLS_CERT / _KEY (and
FLEETWAVE_API_CLIENT_CA), reached by the CLI and by curl verifying it with the CA; plain HTTP
refused on the TLS port; and a public plain-HTTP bind refused when the daemon starts."""

from __future__ import annotations

import json
import shutil
import subprocess

import httpx
import pytest
import trio

from fleetwave.agent.certs import CertPaths, api_env_lines
from fleetwave.api.client import ClientTls
from tests.e2e.harness import Daemon, Harness

pytestmark = pytest.mark.postgres

CURL = shutil.which("curl")


def tls_settings(certs: CertPaths, *, client_ca: bool = False) -> dict[str, str]:
    settings = dict(line.split("=", 1) for line in api_env_lines(certs))
    del settings["FLEETWAVE_API_CA"]  # a client's setting, not the daemon's
    if client_ca:
        settings["FLEETWAVE_API_CLIENT_CA"] = str(certs.ca_cert)
    return settings


def client_env(daemon: Daemon, token: str, **more: str) -> dict[str, str]:
    return {"FLEETWAVE_API": daemon.api, "FLEETWAVE_TOKEN": token, **more}


async def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    assert CURL is not None
    with trio.fail_after(30):
        return await trio.run_process(
            [CURL, "-sS", "--max-time", "10", *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
async def test_https_end_to_end_the_cli_and_curl_verify_with_the_ca(harness: Harness) -> None:
    certs = harness.certs
    await harness.agent_sim(2)
    daemon = await harness.serve("tls", tls=ClientTls(ca=str(certs.ca_cert)), **tls_settings(certs))
    assert daemon.api.startswith("https://127.0.0.1:")
    token = await harness.token("ops", "operator")
    trusted = client_env(daemon, token, FLEETWAVE_API_CA=str(certs.ca_cert))

    # The CLI, verifying the API with the CA: a release created and watched to its end.
    created = json.loads(
        await harness.command("release", "create", "--reason", "over https", "--json", env=trusted)
    )
    watched = await harness.run("release", "watch", str(created["releaseId"]), env=trusted)
    assert watched.returncode == 0, watched.stderr.decode()
    assert "success" in watched.stdout.decode()

    # curl with the CA.
    answer = await curl(
        "--cacert", str(certs.ca_cert), "-H", f"Authorization: Bearer {token}",
        f"{daemon.api}/api/v1/releases",
    )  # fmt: skip
    assert answer.returncode == 0, answer.stderr.decode()
    assert json.loads(answer.stdout)["data"]["items"][0]["status"] == "success"

    # Without the CA the certificate is not trusted, and the CLI says what to set.
    untrusted = await harness.run("nodes", "list", env=client_env(daemon, token))
    assert untrusted.returncode == 1
    assert "FLEETWAVE_API_CA" in untrusted.stderr.decode()
    refused = await curl(f"{daemon.api}/healthz")
    assert refused.returncode == 60  # curl: peer certificate cannot be authenticated

    # Plain HTTP on the TLS port gets no answer: the handshake fails first.
    plain = daemon.api.replace("https://", "http://")
    answer = await curl("-H", f"Authorization: Bearer {token}", f"{plain}/api/v1/nodes")
    assert answer.returncode != 0 and answer.stdout == b""
    async with httpx.AsyncClient(timeout=5) as http:
        with pytest.raises(httpx.TransportError):
            await http.get(f"{plain}/healthz")
    plain_cli = await harness.run("nodes", "list", env={**trusted, "FLEETWAVE_API": plain})
    assert plain_cli.returncode == 1 and "cannot reach the API" in plain_cli.stderr.decode()
    assert "is it HTTPS (an https:// URL)?" in plain_cli.stderr.decode()
    assert daemon.alive
    assert token not in daemon.log()


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
async def test_a_client_certificate_is_required_when_a_client_ca_is_set(harness: Harness) -> None:
    certs = harness.certs
    with_cert = ClientTls(str(certs.ca_cert), str(certs.control_cert), str(certs.control_key))
    daemon = await harness.serve("mtls", tls=with_cert, **tls_settings(certs, client_ca=True))
    token = await harness.token("dash", "viewer")
    ca = str(certs.ca_cert)

    bare = await harness.run("nodes", "list", env=client_env(daemon, token, FLEETWAVE_API_CA=ca))
    assert bare.returncode == 1
    assert "cannot reach the API" in bare.stderr.decode(), bare.stderr
    assert "client certificate" in bare.stderr.decode(), bare.stderr
    listed = await harness.run(
        "nodes", "list", "--cert", str(certs.control_cert), "--key", str(certs.control_key),
        env=client_env(daemon, token, FLEETWAVE_API_CA=ca),
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr.decode()
    assert listed.stdout.decode().startswith("ID")

    without = await curl("--cacert", ca, f"{daemon.api}/healthz")
    assert without.returncode != 0 and without.stdout == b""
    answer = await curl(
        "--cacert", ca, "--cert", str(certs.control_cert), "--key", str(certs.control_key),
        f"{daemon.api}/healthz",
    )  # fmt: skip
    assert answer.returncode == 0, answer.stderr.decode()
    assert json.loads(answer.stdout)["data"] == {"status": "alive"}
    assert json.loads(answer.stdout)["code"] == 0
    [listening] = daemon.events("api.listening")
    assert listening["client_certificates"] is True


async def test_a_plain_http_bind_beyond_loopback_stops_the_daemon_at_start(
    harness: Harness,
) -> None:
    refused = await harness.run("serve", env={"FLEETWAVE_API_BIND": "0.0.0.0:0"})

    assert refused.returncode == 2
    [line] = refused.stderr.decode().splitlines()
    assert line.startswith("fleetwave: setting FLEETWAVE_API_BIND: 0.0.0.0:0 is reachable")
    assert "FLEETWAVE_API_INSECURE=1" in line
    assert refused.stdout == b""  # not even a log line: nothing was started
