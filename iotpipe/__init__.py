"""iotpipe: an IoT telemetry platform — ingest, store, roll up, watch and serve sensor readings."""

__version__ = "0.1.0"
