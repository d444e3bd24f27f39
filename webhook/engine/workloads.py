"""Find pod templates in Kubernetes manifests, for the offline CLI.

Owns: splitting a YAML stream into documents (an untouched document is written back byte
for byte), where each workload kind keeps its pod template, and walking `kind: List`.
Does not: decide or inject (the CLI calls inject.py for each template found).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import yaml

from .errors import InvalidManifest

# Where each workload kind keeps the pod it creates.
POD_TEMPLATE_PATHS: dict[str, tuple[str, ...]] = {
    "Pod": (),
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "ReplicationController": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
}

_DOCUMENT_START = re.compile(r"^---(?=[ \t]|$)", re.MULTILINE)


@dataclass
class Document:
    """One YAML document: its text as given and, once parsed, its data."""

    number: int  # 1-based, as users count
    text: str
    data: Any
    changed: bool = False


def split_documents(text: str) -> list[Document]:
    """The stream's documents, each with its original text (the `---` line stays with it)."""
    starts = [m.start() for m in _DOCUMENT_START.finditer(text)]
    if not starts or starts[0] != 0:
        starts.insert(0, 0)
    chunks = [text[a:b] for a, b in zip(starts, [*starts[1:], len(text)], strict=True)]
    # Comments before the first `---` belong to the first document, as YAML parsers count.
    if len(chunks) > 1 and not chunks[0].startswith("---") and _is_blank(chunks[0]):
        chunks[1] = chunks[0] + chunks[1]
        del chunks[0]
    documents: list[Document] = []
    for chunk in chunks:
        try:
            data = yaml.safe_load(chunk)
        except yaml.YAMLError as err:
            raise InvalidManifest(
                f"doc {len(documents) + 1}: not valid YAML: {err}".replace("\n", " ")
            ) from None
        documents.append(Document(len(documents) + 1, chunk, data))
    return documents


def _is_blank(text: str) -> bool:
    return all(not line.strip() or line.lstrip().startswith("#") for line in text.splitlines())


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the rendered configs) as literal blocks, readable in the output."""


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _represent_str)


def dump_yaml(data: Any) -> str:
    return yaml.dump(
        data,
        Dumper=_Dumper,
        sort_keys=False,
        default_flow_style=False,
        width=100,
        allow_unicode=True,
    )


def dump_document(document: Document) -> str:
    """The document's original text if untouched, else its data as YAML."""
    if not document.changed:
        return document.text
    body = dump_yaml(document.data)
    return "---\n" + body if document.text.startswith("---") else body


@dataclass
class Workload:
    """A pod template inside a document, with what selection needs to know about it."""

    document: Document
    kind: str
    name: str
    namespace: str | None
    labels: dict[str, str]  # the workload object's own labels (they select nothing)
    template: dict[str, Any]

    @property
    def title(self) -> str:
        return f"{self.kind}/{self.name}"


def _name(obj: dict[str, Any]) -> str:
    metadata = obj.get("metadata") or {}
    return str(metadata.get("name") or metadata.get("generateName") or "(unnamed)")


def _template(obj: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any] | None:
    node: Any = obj
    for key in path:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node if isinstance(node, dict) else None


def _objects(document: Document) -> Iterator[dict[str, Any]]:
    data = document.data
    if isinstance(data, dict) and data.get("kind") == "List":
        for item in data.get("items") or []:
            if isinstance(item, dict):
                yield item
    elif isinstance(data, dict):
        yield data


def find_workloads(documents: list[Document]) -> Iterator[Workload]:
    """Every object with a pod template, in document order (List items in their order)."""
    for document in documents:
        for obj in _objects(document):
            kind = obj.get("kind")
            if not isinstance(kind, str) or kind not in POD_TEMPLATE_PATHS:
                continue
            template = _template(obj, POD_TEMPLATE_PATHS[kind])
            if template is None:
                continue
            metadata = obj.get("metadata") or {}
            labels = metadata.get("labels") or {}
            namespace = metadata.get("namespace")
            yield Workload(
                document=document,
                kind=kind,
                name=_name(obj),
                namespace=namespace if isinstance(namespace, str) else None,
                labels=labels if isinstance(labels, dict) else {},
                template=template,
            )
