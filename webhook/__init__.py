"""cache-injector: a mutating admission webhook that gives pods a Varnish cache and an HAProxy
balancer as sidecars. The engine (inject.py) serves both the webhook and the offline CLI."""

__version__ = "0.1.0"
