"""A small subset of kustomize, enough to build deploy/k8s/ without a kustomize binary.

Supported: `resources` (files and directories), `components`, `configMapGenerator` with `files`
and `disableNameSuffixHash: true`, `patches` (strategic merge, with or without a `target` of
kind/name/labelSelector `key=value`), and `namespace`. Strategic merge follows the Kubernetes
rules for what deploy/k8s uses: maps merge, `null` deletes, lists of containers, env, volumes
and volume mounts merge by `name`, every other list is replaced.

Anything else in a kustomization raises NotImplementedError, so a feature added to deploy/k8s
is never silently ignored here. Where `kubectl` is installed, the tests compare this builder's
output with `kubectl kustomize` (see `normalized`).

Not covered: JSON 6902 patches, generators with literals or hashes, images/replicas/labels
transformers, Helm charts inside kustomize.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

SUPPORTED_KEYS = {
    "apiVersion",
    "kind",
    "resources",
    "components",
    "configMapGenerator",
    "generatorOptions",
    "patches",
    "namespace",
}
# Lists that Kubernetes' strategic merge patch merges by the `name` of their items.
MERGE_BY_NAME = {"containers", "initContainers", "env", "volumes", "volumeMounts"}
CLUSTER_SCOPED_KINDS = {
    "Namespace",
    "PersistentVolume",
    "ClusterRole",
    "ClusterRoleBinding",
    "StorageClass",
    "PriorityClass",
    "CustomResourceDefinition",
}


def load_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def build(directory: Path) -> list[dict[str, Any]]:
    """The objects `kubectl kustomize directory` would print, in resource order."""
    return _build(directory, [])


def _build(directory: Path, inherited: list[dict[str, Any]]) -> list[dict[str, Any]]:
    spec = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(spec) - SUPPORTED_KEYS
    if unknown:
        raise NotImplementedError(f"{directory}: kustomize_lite does not support {sorted(unknown)}")
    objects = list(inherited)
    for entry in spec.get("resources", []):
        path = directory / entry
        objects += build(path) if path.is_dir() else load_documents(path)
    objects += _generate(directory, spec)
    for entry in spec.get("components", []):
        objects = _build(directory / entry, objects)
    for patch in spec.get("patches", []):
        objects = _apply_patch(directory, patch, objects)
    if "namespace" in spec:
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED_KINDS:
                obj.setdefault("metadata", {})["namespace"] = spec["namespace"]
    return objects


def _generate(directory: Path, spec: dict[str, Any]) -> list[dict[str, Any]]:
    generators = spec.get("configMapGenerator", [])
    if generators and not spec.get("generatorOptions", {}).get("disableNameSuffixHash"):
        raise NotImplementedError("configMapGenerator needs disableNameSuffixHash: true here")
    objects = []
    for generator in generators:
        if set(generator) - {"name", "files"}:
            raise NotImplementedError(f"configMapGenerator keys {sorted(generator)}")
        data = {Path(f).name: (directory / f).read_text() for f in generator["files"]}
        objects.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": generator["name"]},
                "data": data,
            }
        )
    return objects


def _apply_patch(
    directory: Path, entry: dict[str, Any], objects: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    if set(entry) - {"path", "target"}:
        raise NotImplementedError(f"patch keys {sorted(entry)}")
    (patch,) = load_documents(directory / entry["path"])
    target = entry.get("target") or {"kind": patch["kind"], "name": patch["metadata"]["name"]}
    if set(target) - {"kind", "name", "labelSelector"}:
        raise NotImplementedError(f"patch target keys {sorted(target)}")
    matched = [i for i, obj in enumerate(objects) if _selected(obj, target)]
    if not matched and "target" not in entry:
        raise ValueError(f"{entry['path']}: no {target['kind']} named {target['name']} to patch")
    result = list(objects)
    for i in matched:
        body = {k: v for k, v in patch.items() if k not in ("apiVersion", "kind", "metadata")}
        result[i] = merge(objects[i], body)
    return result


def _selected(obj: dict[str, Any], target: dict[str, Any]) -> bool:
    if "kind" in target and obj["kind"] != target["kind"]:
        return False
    if "name" in target and obj["metadata"]["name"] != target["name"]:
        return False
    if "labelSelector" in target:
        key, _, value = target["labelSelector"].partition("=")
        if obj["metadata"].get("labels", {}).get(key) != value:
            return False
    return True


def merge(base: Any, patch: Any, key: str = "") -> Any:
    """Strategic merge of `patch` into `base` (a new object; neither argument changes)."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = copy.deepcopy(base)
        for k, v in patch.items():
            if v is None:
                out.pop(k, None)
            else:
                out[k] = merge(out[k], v, k) if k in out else copy.deepcopy(v)
        return out
    if key in MERGE_BY_NAME and isinstance(base, list) and isinstance(patch, list):
        out = copy.deepcopy(base)
        names = [item["name"] for item in out]
        for item in patch:
            if item["name"] in names:
                i = names.index(item["name"])
                out[i] = merge(out[i], item)
            else:
                out.append(copy.deepcopy(item))
        return out
    return copy.deepcopy(patch)


def normalized(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Objects sorted by kind and name, named-item lists sorted by name: order-free comparison."""

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            items = [walk(v) for v in node]
            if items and all(isinstance(v, dict) and "name" in v for v in items):
                items.sort(key=lambda v: v["name"])
            return items
        return node

    return sorted((walk(o) for o in objects), key=lambda o: (o["kind"], o["metadata"]["name"]))
