"""Parsers for the value types our options use: quantities, durations, names, backends.

Owns: the syntax of each value type, shared by annotations (options.py) and the policy.
Does not: know annotation keys or defaults. Parsers raise ValueError; the message, when
not empty, replaces the generic "what is accepted" text with a more precise one.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from decimal import Decimal

from . import names

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB

# Kubernetes' quantity grammar (apimachinery resource.ParseQuantity): a signed decimal
# ("1", "1.5", "1.", ".5"), then a binary suffix, a decimal suffix or a decimal exponent.
# Exponents are limited to three digits (Kubernetes saturates anything above 2^63 anyway).
_QUANTITY = re.compile(
    r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"
    r"(?:(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)|[eE]([+-]?[0-9]{1,3}))?$"
)
_QUANTITY_FACTORS: dict[str | None, Decimal] = {
    None: Decimal(1),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    **{suffix: Decimal(1000**power) for power, suffix in enumerate("kMGTPE", 1)},
    **{suffix + "i": Decimal(1024**power) for power, suffix in enumerate("KMGTPE", 1)},
}
_DURATION = re.compile(r"^([0-9]{1,9})(s|m|h|d)$")
_DURATION_FACTORS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_DURATION_SECONDS = 365 * 86400

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
# IANA service name, as Kubernetes validates port names.
PORT_NAME = re.compile(r"^(?=.*[a-z])(?!.*--)[a-z0-9]([-a-z0-9]{0,13}[a-z0-9])?$")
# Characters safe inside an haproxy.cfg word and a VCL string without quoting.
# An OCI image reference, as distribution/reference parses it: [registry[:port]/]path[:tag]
# [@digest]. A digest must be sha256 (the only one registries use) with its 64 hex digits.
_IMAGE_NAME = (
    r"(?:(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
    r"|\[[0-9a-fA-F:]+\])(?::[0-9]+)?/)?"
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
)
IMAGE_REFERENCE = re.compile(
    rf"^{_IMAGE_NAME}(?::[\w][\w.-]{{0,127}})?(?:@sha256:[0-9a-f]{{64}})?$"
)
IMAGE_DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
HTTP_PATH = re.compile(r"^/[A-Za-z0-9\-._~/%?=&+,:@]{0,255}$")


def image_problem(text: str) -> str | None:
    """What is wrong with an image reference, or None when it is one."""
    if IMAGE_REFERENCE.match(text) and len(text) <= 1024:
        return None
    _, at, digest = text.partition("@")
    if at and not IMAGE_DIGEST.search(text):
        return (
            f"the digest {json.dumps(digest)} is not sha256: followed by 64 lowercase hex digits "
            "(NAME@sha256:<64 hex>)"
        )
    return (
        "an image reference: [REGISTRY[:PORT]/]PATH[:TAG][@sha256:<64 hex>], lowercase path, "
        "no spaces"
    )


def parse_quantity(text: str) -> Decimal:
    """A Kubernetes quantity (binary or decimal suffix, or an exponent) as an exact number."""
    match = _QUANTITY.match(text)
    if not match:
        raise ValueError("")
    number, suffix, exponent = match.groups()
    value = Decimal(number) * _QUANTITY_FACTORS[suffix]
    if exponent is not None:
        value = value.scaleb(int(exponent))
    return value


def parse_size(text: str) -> int:
    """A memory quantity in whole bytes (rounded down)."""
    return int(parse_quantity(text))


def format_quantity(size: int) -> str:
    """Bytes as the shortest exact binary quantity (128Mi), for messages and resources."""
    for suffix, factor in (("Ti", 1024 * GIB), ("Gi", GIB), ("Mi", MIB), ("Ki", KIB)):
        if size % factor == 0 and size >= factor:
            return f"{size // factor}{suffix}"
    return str(size)


def parse_duration(text: str) -> int:
    """A duration such as 120s, 5m, 6h or 1d, in seconds (0 to 365 days)."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError("")
    seconds = int(match.group(1)) * _DURATION_FACTORS[match.group(2)]
    if seconds > MAX_DURATION_SECONDS:
        raise ValueError("")
    return seconds


def parse_bool(text: str) -> bool:
    """Exactly `true` or `false`, as Kubernetes annotations spell them."""
    if text == "true":
        return True
    if text == "false":
        return False
    raise ValueError("")


def parse_int(text: str, low: int, high: int) -> int:
    """A decimal integer within bounds (no sign, no spaces, no leading zeros but 0)."""
    if not re.fullmatch(r"0|[1-9][0-9]{0,8}", text):
        raise ValueError("")
    number = int(text)
    if not low <= number <= high:
        raise ValueError("")
    return number


def parse_http_path(text: str) -> str:
    """An absolute HTTP path safe to place in haproxy.cfg and VCL unquoted."""
    if not HTTP_PATH.match(text):
        raise ValueError("")
    return text


def parse_dns_subdomain(text: str) -> str:
    """A Kubernetes object name (DNS-1123 subdomain)."""
    if len(text) > 253 or not DNS_SUBDOMAIN.match(text):
        raise ValueError("")
    return text


@dataclass(frozen=True)
class Backend:
    """The backend Service as the annotation names it; the namespace may be left to the pod."""

    service: str
    namespace: str | None
    port: int | str

    def fqdn(self, namespace: str, cluster_domain: str) -> str:
        return f"{self.service}.{self.namespace or namespace}.svc.{cluster_domain}"

    def __str__(self) -> str:
        namespace = f".{self.namespace}" if self.namespace else ""
        return f"{self.service}{namespace}:{self.port}"


def parse_backend(text: str) -> Backend:
    """SERVICE[.NAMESPACE]:PORT — PORT a number or a Service port name."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text:
        raise ValueError("")
    service, _, namespace = host.partition(".")
    if not DNS_1035_LABEL.match(service):
        raise ValueError(
            "SERVICE[.NAMESPACE]:PORT where SERVICE is a Service name (lowercase letters, "
            "digits and '-', starting with a letter, at most 63 characters)"
        )
    if namespace and not DNS_LABEL.match(namespace):
        raise ValueError(
            "SERVICE[.NAMESPACE]:PORT where NAMESPACE is a namespace name (lowercase letters, "
            "digits and '-', at most 63 characters); not a full DNS name"
        )
    port: int | str
    if port_text.isdigit():
        port = int(port_text)
        if not 1 <= port <= 65535 or port_text != str(port):
            raise ValueError("SERVICE[.NAMESPACE]:PORT where PORT is from 1 to 65535")
    elif PORT_NAME.match(port_text):
        port = port_text
    else:
        raise ValueError(
            "SERVICE[.NAMESPACE]:PORT where PORT is a number from 1 to 65535 or a Service "
            "port name (at most 15 lowercase letters, digits and '-')"
        )
    return Backend(service, namespace or None, port)


@dataclass(frozen=True)
class ObjectSize:
    """The largest object the cache stores: a size, or a percentage of the cache size."""

    size: int | None = None
    percent: int | None = None

    def bytes_for(self, cache_size: int) -> int:
        """The limit in bytes for a cache of cache_size bytes."""
        if self.percent is not None:
            return cache_size * self.percent // 100
        assert self.size is not None
        return self.size

    def __str__(self) -> str:
        if self.percent is not None:
            return f"{self.percent}%"
        return format_quantity(int(self.size or 0))


def parse_object_size(text: str) -> ObjectSize:
    """A percentage of cache-size from 1% to 100% (such as 10%), or a quantity of at least 1Ki."""
    match = re.fullmatch(r"([1-9][0-9]{0,2})%", text)
    if match:
        percent = int(match.group(1))
        if percent > 100:
            raise ValueError("")
        return ObjectSize(percent=percent)
    size = parse_size(text)
    if size < KIB:
        raise ValueError("")
    return ObjectSize(size=size)


# A cookie or query parameter name (restricted to characters safe in a VCL regex once "." is
# escaped), optionally ending in "*" to name every one starting with the rest.
_WILDCARD_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}\*?$|^[A-Za-z0-9_.-]{0,63}\*$")
MAX_COOKIE_NAMES = 32


def _parse_wildcard_names(text: str, most: int) -> tuple[str, ...]:
    names = tuple(part.strip() for part in text.split(","))
    if not names or len(names) > most:
        raise ValueError("")
    for name in names:
        if not _WILDCARD_NAME.match(name) or name == "*":
            raise ValueError("")
    return names


def parse_cookie_names(text: str) -> tuple[str, ...]:
    """Comma-separated cookie names, each optionally ending in * (a prefix); at most 32."""
    return _parse_wildcard_names(text, MAX_COOKIE_NAMES)


def wildcard_names_regex(names: tuple[str, ...], stop: str) -> str:
    """A VCL regex matching any of the names as a whole name, a trailing * matching anything
    but the `stop` characters: (_ga|_gid|_ga_[^=;]*) for cookies."""
    parts = [
        name[:-1].replace(".", "\\.") + f"[^{stop}]*"
        if name.endswith("*")
        else name.replace(".", "\\.")
        for name in names
    ]
    return "(" + "|".join(parts) + ")"


def cookie_names_regex(names: tuple[str, ...]) -> str:
    """A VCL regex matching any of the names as a whole cookie name: (_ga|_gid|_ga_[^=;]*)."""
    return wildcard_names_regex(names, "=;")


# `trackers` in ignore-query-params: parameters that identify a click, a campaign or a mail
# recipient for analytics and never select content. Drawn from the query-stripping lists of
# Firefox (Enhanced Tracking Protection: firefox-source-docs.mozilla.org, "Query Parameter
# Stripping") and Brave, plus the campaign and click parameters the vendors document
# (docs/annotations.md names them; webhook/tools/docs.py writes that section).
QUERY_PARAMS_PRESET = "trackers"
TRACKING_QUERY_PARAMS: tuple[str, ...] = (
    "utm_*",
    "gclid",
    "gclsrc",
    "gbraid",
    "wbraid",
    "dclid",
    "_ga",
    "_gl",
    "fbclid",
    "igshid",
    "msclkid",
    "mc_cid",
    "mc_eid",
    "li_fat_id",
    "twclid",
    "ttclid",
    "yclid",
    "_openstat",
    "mtm_*",
    "_hsenc",
    "_hsmi",
    "__hssc",
    "__hstc",
    "__hsfp",
    "hsCtaTracking",
    "mkt_tok",
    "oly_anon_id",
    "oly_enc_id",
    "vero_id",
    "vero_conv",
    "__s",
    "rb_clickid",
    "s_cid",
    "wickedid",
)
MAX_QUERY_PARAMS = 64


def parse_query_param_names(text: str) -> tuple[str, ...]:
    """Comma-separated parameter names, each optionally ending in * (a prefix), `trackers`
    standing for TRACKING_QUERY_PARAMS; at most 64 once expanded, duplicates dropped."""
    expanded: list[str] = []
    for name in _parse_wildcard_names(text, MAX_QUERY_PARAMS):
        for one in TRACKING_QUERY_PARAMS if name == QUERY_PARAMS_PRESET else (name,):
            if one not in expanded:
                expanded.append(one)
    if len(expanded) > MAX_QUERY_PARAMS:
        raise ValueError(
            f"at most {MAX_QUERY_PARAMS} query parameter names in all; "
            f"{QUERY_PARAMS_PRESET} stands for {len(TRACKING_QUERY_PARAMS)} of them, so at "
            f"most {MAX_QUERY_PARAMS - len(TRACKING_QUERY_PARAMS)} more beside it"
        )
    return tuple(expanded)


def query_names_regex(names: tuple[str, ...]) -> str:
    """A VCL regex matching any of the names as a whole query parameter name."""
    return wildcard_names_regex(names, "=&")


# A ConfigMap key, as Kubernetes validates it (IsConfigMapKey).
CONFIG_MAP_KEY = re.compile(r"^[-._a-zA-Z0-9]{1,253}$")


@dataclass(frozen=True)
class TlsCa:
    """Where backend-tls-ca takes the CA bundle from: a ConfigMap key, or (config_map None)
    the HAProxy image's system bundle."""

    config_map: str | None
    key: str

    def __str__(self) -> str:
        return f"{self.config_map}:{self.key}" if self.config_map else self.key


def parse_tls_ca(text: str, system: str, default_key: str) -> TlsCa:
    """CONFIGMAP[:KEY] or the word `system`; each part's rule is named when it is broken."""
    if text == system:
        return TlsCa(None, system)
    name, sep, key = text.partition(":")
    if len(name) > 253 or not DNS_SUBDOMAIN.match(name):
        raise ValueError(
            "CONFIGMAP[:KEY] where CONFIGMAP is a ConfigMap name (lowercase letters, digits, "
            f"'-' and '.', at most 253 characters), or {system}"
        )
    if sep and (not CONFIG_MAP_KEY.match(key) or key in (".", "..")):
        raise ValueError(
            "CONFIGMAP[:KEY] where KEY is a ConfigMap key (letters, digits, '-', '_' and '.', "
            "at most 253 characters), such as ca.crt"
        )
    return TlsCa(name, key if sep else default_key)


def parse_dns_name(text: str) -> str:
    """A host name for SNI and certificate checks: DNS labels, lowercase, no wildcard."""
    if len(text) > 253 or not DNS_SUBDOMAIN.match(text):
        raise ValueError("")
    if any(len(label) > 63 for label in text.split(".")):
        raise ValueError("")
    return text


_HEADER_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9-]{0,63}$")
# Headers a tag header must not be: the generated VCL removes the tag header from responses
# (and copies it to xkey), which would break caching, framing or our own markers.
RESERVED_HEADERS = frozenset(
    {
        "age",
        "cache-control",
        "connection",
        "content-encoding",
        "content-length",
        "content-type",
        "date",
        "etag",
        "expires",
        "host",
        "last-modified",
        "location",
        "set-cookie",
        "transfer-encoding",
        "vary",
        "via",
        "x-cache",
    }
)


def parse_header_name(text: str) -> str:
    """An HTTP header name safe to write into VCL as resp.http.NAME (no quoting possible)."""
    lowered = text.lower()
    if (
        not _HEADER_NAME.match(text)
        or lowered in RESERVED_HEADERS
        or lowered.startswith("x-cache-")
        or text.endswith("-")
    ):
        raise ValueError("")
    return text


def has_transit_buffer(image: str) -> bool:
    """Does this Varnish image know transit_buffer? Not 7.1 and older (Debian 12's): an image
    whose tag names such a version; any other tag (8.0, latest, a digest) is taken to."""
    name = image.rsplit("/", 1)[-1].split("@", 1)[0]
    tag = name.partition(":")[2]
    parts = tag.split(".")
    if len(parts) < 2 or not parts[0].isdigit() or not parts[1][:1].isdigit():
        return True
    minor = int("".join(c for c in parts[1] if c.isdigit()) or 0)
    return (int(parts[0]), minor) >= (7, 2)


def parse_option_value(kind: str, text: str, low: int | None, high: int | None) -> object:
    """Parse one option value by the kind named in the annotation table (names.OPTIONS)."""
    if kind == "backend":
        return parse_backend(text)
    if kind.startswith("enum:"):
        if text not in kind[len("enum:") :].split(","):
            raise ValueError("")
        return text
    if kind == "int":
        assert low is not None and high is not None
        return parse_int(text, low, high)
    if kind == "bool":
        return parse_bool(text)
    if kind == "quantity":
        return parse_size(text)
    if kind == "duration":
        seconds = parse_duration(text)
        if (low is not None and seconds < low) or (high is not None and seconds > high):
            raise ValueError("")
        return seconds
    if kind == "path":
        return parse_http_path(text)
    if kind == "dns_subdomain":
        return parse_dns_subdomain(text)
    if kind == "object_size":
        return parse_object_size(text)
    if kind == "cookie_names":
        return parse_cookie_names(text)
    if kind == "query_names":
        return parse_query_param_names(text)
    if kind == "tls_ca":
        return parse_tls_ca(text, names.BACKEND_CA_SYSTEM, names.BACKEND_CA_DEFAULT_KEY)
    if kind == "dns_name":
        return parse_dns_name(text)
    if kind == "header_name":
        return parse_header_name(text)
    raise AssertionError(f"unknown option kind {kind}")
