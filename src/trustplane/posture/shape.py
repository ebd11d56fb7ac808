"""The shape of every field the shipped rules read, checked before any rule runs.

A rule written `has(c.securityContext) && c.securityContext.privileged` reads a privileged
container only if `securityContext` is an object and `privileged` a boolean; a pod whose
`metadata` is a string, or a Deployment whose `template.metadata` is one, is no pod at all to
`workloads.pod_of`, so no pod rule ran and the object was allowed. The engine therefore reads
an object only when each field a rule looks at has the type Kubernetes gives it, and refuses
anything else with the field's path (`object.spec.template.metadata: expected an object, got a
string`) instead of guessing.

This is a compact hand-written table, not the Kubernetes OpenAPI schemas (`kubernetes-validate`
ships them and works offline): validating a 10-container Deployment against them with
`jsonschema` costs about 60 ms (11 ms for a one-container pod), thirty times a whole review
and six times the 10 ms budget for one, and the wheel is 22 MB. The table covers what the
rules read — every field of `packs/*.yaml` — with the types the API server would have
enforced; fields no rule reads may hold anything. A rule file of the operator's that reads
more is still safe: a field it reads that is missing or of another type makes the rule fail
closed, with a message naming the field (`engine.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from trustplane.posture.workloads import POD_PATHS

INT64 = (-(2**63), 2**63 - 1)
INT32 = (-(2**31), 2**31 - 1)


@dataclass(frozen=True, slots=True)
class Scalar:
    kind: str  # "string", "boolean", "integer"
    bounds: tuple[int, int] = INT64


@dataclass(frozen=True, slots=True)
class Obj:
    """An object: the fields listed have these shapes, `required` ones must be set, any other
    field may hold anything (no rule reads it)."""

    fields: Mapping[str, Shape] = field(default_factory=dict)
    required: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ListOf:
    item: Shape


@dataclass(frozen=True, slots=True)
class MapOf:
    """An object used as a map (labels, annotations, ConfigMap data): every value one shape."""

    value: Shape


Shape = Scalar | Obj | ListOf | MapOf | None  # None: anything (only its presence is read)

STRING = Scalar("string")
BOOLEAN = Scalar("boolean")
INTEGER = Scalar("integer")
PORT = Scalar("integer", INT32)

METADATA = Obj(
    {
        "name": STRING,
        "generateName": STRING,
        "namespace": STRING,
        "labels": MapOf(STRING),
        "annotations": MapOf(STRING),
    }
)
PROFILE = Obj({"type": STRING, "localhostProfile": STRING})
SE_LINUX = Obj({"type": STRING, "user": STRING, "role": STRING, "level": STRING})
WINDOWS = Obj({"hostProcess": BOOLEAN})
_SECURITY_COMMON: dict[str, Shape] = {
    "runAsNonRoot": BOOLEAN,
    "runAsUser": INTEGER,
    "seccompProfile": PROFILE,
    "appArmorProfile": PROFILE,
    "seLinuxOptions": SE_LINUX,
    "windowsOptions": WINDOWS,
}
POD_SECURITY = Obj(
    {
        **_SECURITY_COMMON,
        "sysctls": ListOf(Obj({"name": STRING, "value": STRING}, required=("name",))),
    }
)
CONTAINER_SECURITY = Obj(
    {
        **_SECURITY_COMMON,
        "privileged": BOOLEAN,
        "allowPrivilegeEscalation": BOOLEAN,
        "readOnlyRootFilesystem": BOOLEAN,
        "procMount": STRING,
        "capabilities": Obj({"add": ListOf(STRING), "drop": ListOf(STRING)}),
    }
)
HANDLER = Obj({"httpGet": Obj({"host": STRING}), "tcpSocket": Obj({"host": STRING})})
CONTAINER = Obj(
    {
        "name": STRING,
        "image": STRING,
        "securityContext": CONTAINER_SECURITY,
        "ports": ListOf(Obj({"hostPort": PORT, "containerPort": PORT})),
        "env": ListOf(Obj({"name": STRING, "value": STRING}, required=("name",))),
        "resources": Obj({"requests": MapOf(None), "limits": MapOf(None)}),
        "livenessProbe": HANDLER,
        "readinessProbe": HANDLER,
        "startupProbe": HANDLER,
        "lifecycle": Obj({"postStart": HANDLER, "preStop": HANDLER}),
    },
    required=("name",),
)
POD_SPEC = Obj(
    {
        "hostNetwork": BOOLEAN,
        "hostPID": BOOLEAN,
        "hostIPC": BOOLEAN,
        "hostUsers": BOOLEAN,
        "serviceAccountName": STRING,
        "automountServiceAccountToken": BOOLEAN,
        "os": Obj({"name": STRING}),
        "securityContext": POD_SECURITY,
        "volumes": ListOf(Obj({"name": STRING}, required=("name",))),
        "containers": ListOf(CONTAINER),
        "initContainers": ListOf(CONTAINER),
        "ephemeralContainers": ListOf(CONTAINER),
    }
)
POD_TEMPLATE = Obj({"metadata": METADATA, "spec": POD_SPEC}, required=("spec",))


def _pod_kind(path: tuple[str, ...]) -> Obj:
    """The object of a kind whose pod sits at `path` (POD_PATHS): objects down to the pod."""
    shape: Obj = POD_TEMPLATE
    for key in reversed(path):
        shape = Obj({key: shape}, required=(key,))
    return Obj({**shape.fields, "metadata": METADATA}, required=shape.required)


KINDS: dict[str, Obj] = {kind: _pod_kind(path) for kind, path in POD_PATHS.items()}
KINDS["ConfigMap"] = Obj({"metadata": METADATA, "data": MapOf(STRING)})
_RBAC_RULE = Obj(
    {
        "apiGroups": ListOf(STRING),
        "resources": ListOf(STRING),
        "verbs": ListOf(STRING),
        "resourceNames": ListOf(STRING),
    }
)
KINDS["Role"] = KINDS["ClusterRole"] = Obj({"metadata": METADATA, "rules": ListOf(_RBAC_RULE)})
_SUBJECT = Obj({"kind": STRING, "name": STRING, "namespace": STRING})
KINDS["RoleBinding"] = KINDS["ClusterRoleBinding"] = Obj(
    {
        "metadata": METADATA,
        "roleRef": Obj({"kind": STRING, "name": STRING}),
        "subjects": ListOf(_SUBJECT),
    }
)
OTHER = Obj({"metadata": METADATA})  # any other kind: what the engine itself reads

# A check walks a value, `trail` holding the keys that lead to it; a path string is only made
# for a problem (making one for every field visited doubled the cost of a check).
Trail = list[str | int]
Check = Callable[[Any, Trail, list[tuple[Trail, str]]], None]


def problems(obj: Mapping[str, Any], root: str = "object") -> list[str]:
    """What keeps the engine from reading `obj` completely, each naming its field path; empty
    when every field a rule reads has its type. Null fields count as unset (the engine drops
    them, as the API server does when it decodes an object)."""
    kind = obj.get("kind")
    if not isinstance(kind, str):
        return [f"{root}.kind: expected a string, got {_type_name(kind)}"]
    found: list[tuple[Trail, str]] = []
    _CHECKS.get(kind, _OTHER)(obj, [], found)
    return [f"{_path(root, trail)}: {problem}" for trail, problem in found]


def _path(root: str, trail: Trail) -> str:
    out = root
    for key in trail:
        if isinstance(key, int):
            out += f"[{key}]"
        elif isinstance(key, _MapKey):  # a key is as long as the caller likes: cut
            out += f'["{key if len(key) <= 64 else key[:63] + "…"}"]'
        else:
            out += f".{key}"
    return out


class _MapKey(str):
    """A key of a map (a label, an annotation): shown as `labels["app"]`, not `labels.app`."""

    __slots__ = ()


def _compile(shape: Shape) -> Check:
    if shape is None:
        return _anything
    if isinstance(shape, Scalar):
        return _scalar(shape)
    if isinstance(shape, Obj):
        return _object(shape)
    if isinstance(shape, ListOf):
        return _list(_compile(shape.item))
    return _map(_compile(shape.value) if shape.value is not None else None)


def _anything(value: Any, trail: Trail, out: list[tuple[Trail, str]]) -> None:
    return None


def _scalar(shape: Scalar) -> Check:
    low, high = shape.bounds

    def string(value: Any, trail: Trail, out: list[tuple[Trail, str]]) -> None:
        if not isinstance(value, str):
            out.append((list(trail), f"expected a string, got {_type_name(value)}"))

    def boolean(value: Any, trail: Trail, out: list[tuple[Trail, str]]) -> None:
        if not isinstance(value, bool):
            out.append((list(trail), f"expected a boolean, got {_type_name(value)}"))

    def integer(value: Any, trail: Trail, out: list[tuple[Trail, str]]) -> None:
        if not isinstance(value, int) or isinstance(value, bool):
            out.append((list(trail), f"expected an integer, got {_type_name(value)}"))
        elif not low <= value <= high:
            out.append((list(trail), f"expected an integer from {low} to {high}, got {value}"))

    return {"string": string, "boolean": boolean}.get(shape.kind, integer)


def _object(shape: Obj) -> Check:
    fields = [(name, _compile(inner)) for name, inner in shape.fields.items()]
    required = shape.required

    def check(value: Any, trail: Trail, out: list[tuple[Trail, str]]) -> None:
        if not isinstance(value, dict):
            out.append((list(trail), f"expected an object, got {_type_name(value)}"))
            return
        for name in required:
            if value.get(name) is None:
                out.append(([*trail, name], "required field is missing"))
        for name, inner in fields:
            item = value.get(name)
            if item is not None:
                trail.append(name)
                inner(item, trail, out)
                trail.pop()

    return check


def _list(item_check: Check) -> Check:
    def check(value: Any, trail: Trail, out: list[tuple[Trail, str]]) -> None:
        if not isinstance(value, list):
            out.append((list(trail), f"expected a list, got {_type_name(value)}"))
            return
        for index, item in enumerate(value):
            trail.append(index)
            if item is None:
                out.append((list(trail), "expected a value, got null"))
            else:
                item_check(item, trail, out)
            trail.pop()

    return check


def _map(value_check: Check | None) -> Check:
    def check(value: Any, trail: Trail, out: list[tuple[Trail, str]]) -> None:
        if not isinstance(value, dict):
            out.append((list(trail), f"expected an object, got {_type_name(value)}"))
            return
        if value_check is None:
            return
        for key, item in value.items():
            if item is not None:
                trail.append(_MapKey(key))
                value_check(item, trail, out)
                trail.pop()

    return check


_CHECKS: dict[str, Check] = {kind: _compile(shape) for kind, shape in KINDS.items()}
_OTHER = _compile(OTHER)


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"
