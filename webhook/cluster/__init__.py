"""Commands that talk to a Kubernetes API server with the `kubernetes` client (the webhook
itself never does). Imports the engine, never the server."""
