"""Settings: defaults < TOML file (FLEETWAVE_CONFIG) < environment."""

from fleetwave.config.settings import Settings, SettingsError, load_settings

__all__ = ["Settings", "SettingsError", "load_settings"]
