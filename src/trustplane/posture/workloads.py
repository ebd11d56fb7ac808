"""Pods wherever they hide: a bare Pod or the pod template of a workload controller."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# kind → path from the object to its pod (metadata + spec); [] is the object itself.
POD_PATHS: dict[str, tuple[str, ...]] = {
    "Pod": (),
    "Deployment": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "Job": ("spec", "template"),
    "ReplicationController": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
}


@dataclass(frozen=True, slots=True)
class PodView:
    """The pod an object runs: its metadata, spec, and where it sits in the object."""

    metadata: dict[str, Any]
    spec: dict[str, Any]
    path: tuple[str, ...]

    @property
    def spec_path(self) -> str:
        return ".".join((*self.path, "spec"))

    def containers(self) -> list[dict[str, Any]]:
        """Every container, init container and ephemeral container, as PSA visits them."""
        out: list[dict[str, Any]] = []
        for key in ("initContainers", "containers", "ephemeralContainers"):
            items = self.spec.get(key)
            if isinstance(items, list):
                out.extend(c for c in items if isinstance(c, dict))
        return out


def pod_of(obj: dict[str, Any]) -> PodView | None:
    """The pod of `obj`, or None for an object that runs no pod (or a malformed one)."""
    path = POD_PATHS.get(str(obj.get("kind", "")))
    if path is None:
        return None
    node: Any = obj
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
    if not isinstance(node, dict):
        return None
    spec = node.get("spec")
    metadata = node.get("metadata") or {}
    if not isinstance(spec, dict) or not isinstance(metadata, dict):
        return None
    return PodView(metadata, spec, path)
