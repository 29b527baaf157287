"""Jetson device probes, telemetry, camera sources and apps. Not built yet."""
