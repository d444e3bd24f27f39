"""The HTTPS server around the engine: review codec, per-review handler, FastAPI app, worker
supervisor, TLS files, file watching, JSON logs and Prometheus metrics. Imports the engine, never
the reverse."""
