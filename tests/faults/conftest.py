"""Fault-injection fixtures: the PostgreSQL fixtures of the integration suite, the simulation
fixture ``make_sim``, and certificates.

``certs``        a CA, control certificate and agent certificate for 127.0.0.2 ... 127.0.0.49.
``foreign_certs`` the same names signed by another CA, which the daemons do not trust.
"""

from __future__ import annotations

import pytest

from fleetwave.agent.certs import CertPaths, init_certs
from tests.integration.conftest import database_url, pg_store, postgres_server
from tests.sim.conftest import make_sim

__all__ = ["database_url", "make_sim", "pg_store", "postgres_server"]

CERT_AGENTS = 48


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertPaths:
    return init_certs(tmp_path_factory.mktemp("certs"), agents=CERT_AGENTS)


@pytest.fixture(scope="session")
def foreign_certs(tmp_path_factory: pytest.TempPathFactory) -> CertPaths:
    return init_certs(tmp_path_factory.mktemp("foreign-certs"), agents=CERT_AGENTS)
