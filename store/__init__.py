"""Persistence: the Store interface, PostgresStore (asyncpg via trio-asyncio) and MemoryStore.

This package is the only place in fleetwave that touches asyncio.
"""
