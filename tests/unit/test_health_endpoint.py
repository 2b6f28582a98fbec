"""The simulated health endpoint keeps its latest probes only: a demo left running for days
answers checks every fraction of a second."""

from __future__ import annotations

import httpx

from fleetwave.agent.health_sim import PATH, HealthEndpoint


async def test_it_keeps_the_latest_probes_and_no_more() -> None:
    endpoint = HealthEndpoint(kept=3)
    transport = httpx.ASGITransport(app=endpoint.app())
    async with httpx.AsyncClient(transport=transport, base_url="http://health") as http:
        for release in range(1, 6):
            answer = await http.get(PATH, params={"release": release, "batch": 1})
            assert answer.json() == {"healthy": True}
        endpoint.turn_unhealthy("edge-001 serves 5xx")
        refused = await http.get(PATH, params={"release": 6})

    assert refused.status_code == 503
    assert [probe.release for probe in endpoint.probes] == ["4", "5", "6"]
    assert [probe.healthy for probe in endpoint.probes] == [True, True, False]
    assert [probe.release for probe in endpoint.of(5, batch=1)] == ["5"]
