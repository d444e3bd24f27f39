"""The exception tree: one class per way a review, an annotation or a policy can fail.

Each error keeps the data its message is made from, so tests and logs read fields, not text.
Skipping a pod is not an error (selection.py returns a Decision); only refusals raise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


class CacheInjectorError(Exception):
    """Base of every error this package raises on purpose."""


class InvalidAnnotation(CacheInjectorError):
    """An annotation (or policy option) value that cannot be used as given."""

    def __init__(self, key: str, value: str, accepted: str) -> None:
        super().__init__(f"{key}: {value} is invalid: {accepted}")
        self.key, self.value, self.accepted = key, value, accepted


class PortClash(InvalidAnnotation):
    """A sidecar port that a container of the pod already uses."""


class LimitExceeded(InvalidAnnotation):
    """A value above a cluster policy limit; the limit is named in the message."""


class BackendNamespaceNotAllowed(InvalidAnnotation):
    """A backend Service in a namespace the policy does not let this namespace target."""


class InsecureBackendTlsNotAllowed(InvalidAnnotation):
    """backend-tls: insecure-skip-verify in a namespace the policy does not allow it in."""


class ImageOverrideNotAllowed(InvalidAnnotation):
    """A user-declared sidecar image while the policy pins the images."""


class InvalidOptions(CacheInjectorError):
    """Every problem found in one pod: parse everything, then report it in one denial."""

    def __init__(
        self, problems: Sequence[InvalidAnnotation], parsed: Mapping[str, object] | None = None
    ) -> None:
        super().__init__("; ".join(str(problem) for problem in problems))
        self.problems = tuple(problems)
        # The values that did parse, so later checks (port clashes) still run.
        self.parsed: Mapping[str, object] = parsed or {}


class InvalidPolicy(CacheInjectorError):
    """A policy that does not validate; each problem reads `path.to.field: value: accepted`."""

    def __init__(self, problems: Sequence[str], source: str = "policy") -> None:
        super().__init__(f"{source}: " + "; ".join(problems))
        self.problems = tuple(problems)
        self.source = source


class MalformedReview(CacheInjectorError):
    """A request body that is not a usable AdmissionReview (answered with HTTP 400)."""

    def __init__(self, field: str, value: str, accepted: str) -> None:
        super().__init__(f"{field}: {value} is invalid: {accepted}")
        self.field, self.value, self.accepted = field, value, accepted


class InvalidCertificate(CacheInjectorError):
    """A TLS certificate and key that cannot be served (unreadable, not PEM, not a pair)."""

    def __init__(self, cert_path: str, key_path: str, reason: str) -> None:
        super().__init__(f"{cert_path} + {key_path}: cannot serve: {reason}")
        self.cert_path, self.key_path, self.reason = cert_path, key_path, reason


class InvalidManifest(CacheInjectorError):
    """A CLI input document that cannot be read as a Kubernetes object."""
