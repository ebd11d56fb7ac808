"""The admission webhook served by a real `trustplane serve` over HTTPS on loopback:
AdmissionReview in and out, namespace modes, warnings, dry runs and the ledger record."""

from __future__ import annotations

import copy
import json
import os
import ssl
import subprocess
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import SHOP
from tests.support import TRUSTPLANE, Server, free_port, run_cli, server_env, wait_for, wait_ready
from tests.tlscert import self_signed
from trustplane.posture.workloads import POD_PATHS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(module_database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    state = tmp_path_factory.mktemp("state")
    cert, key = self_signed(state)
    port = free_port()
    env = server_env(
        state,
        module_database_url,
        server__port=port,
        policy__bundle_dir=SHOP,
        policy__watch="false",
        tls__cert_file=cert,
        tls__key_file=key,
        admission='{"enforce": ["pss-baseline"], "warn": ["pss-restricted"], "audit": []}',
        admission__namespaces=(
            '{"prod": {"enforce": ["pss-restricted@v1.30"], "warn": [], "audit": []},'
            ' "sandbox": {"enforce": [], "warn": [], "audit": ["pss-restricted"]}}'
        ),
        admission__exemptions=json.dumps(
            [
                {
                    "rule": "pss-baseline/privileged",
                    "owner": "ops",
                    "reason": "node agent",
                    "expires": "2999-01-01",
                    "namespaces": ["legacy"],
                },
                {
                    "rule": "pss-baseline/privileged",
                    "owner": "ops",
                    "reason": "long gone",
                    "expires": "2020-01-01",
                    "namespaces": ["retired"],
                },
            ]
        ),
    )
    assert run_cli("init", env=env).returncode == 0
    log_path = state / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*TRUSTPLANE, "serve"], env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT
        )
    srv = Server(f"https://127.0.0.1:{port}", env, process, log_path)
    srv.token = (state / "admin.token").read_text().strip()
    srv.client = httpx.Client(
        base_url=srv.url, timeout=10, verify=ssl.create_default_context(cafile=str(cert))
    )
    try:
        wait_ready(srv)
        yield srv
    finally:
        srv.stop()


RESTRICTED_POD: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "web", "namespace": "default"},
    "spec": {
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [
            {
                "name": "web",
                "image": "registry.example.com/web:1.0",
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "capabilities": {"drop": ["ALL"]},
                },
            }
        ],
    },
}


def review(
    obj: dict[str, Any], uid: str, namespace: str = "default", **request: Any
) -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": obj["kind"]},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "name": obj["metadata"]["name"],
            "operation": "CREATE",
            "userInfo": {"username": "alice", "groups": ["system:authenticated"]},
            "object": obj,
            "oldObject": None,
            "dryRun": False,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"},
            **request,
        },
    }


def post(server: Server, body: Any) -> dict[str, Any]:
    response = server.client.post("/v1/admission", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["apiVersion"] == "admission.k8s.io/v1"
    assert answer["kind"] == "AdmissionReview"
    return dict(answer["response"])


def privileged_deployment() -> dict[str, Any]:
    pod_spec = copy.deepcopy(RESTRICTED_POD["spec"])
    pod_spec["containers"][0]["securityContext"]["privileged"] = True
    pod_spec["hostNetwork"] = True
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "agent"},
        "spec": {"template": {"metadata": {"labels": {"app": "agent"}}, "spec": pod_spec}},
    }


def recorded(server: Server, decision_id: str) -> dict[str, Any] | None:
    response = server.client.get(f"/v1/decisions/{decision_id}", headers=server.admin)
    return None if response.status_code == 404 else dict(response.json())


def test_a_compliant_pod_is_allowed_with_its_uid_echoed(server: Server) -> None:
    answer = post(server, review(RESTRICTED_POD, "uid-allowed"))
    assert answer["uid"] == "uid-allowed"
    assert answer["allowed"] is True
    assert "warnings" not in answer and "status" not in answer


def test_a_privileged_deployment_is_refused_listing_each_failed_rule(server: Server) -> None:
    answer = post(server, review(privileged_deployment(), "uid-refused"))
    assert answer["allowed"] is False
    assert answer["status"]["code"] == 403
    message = answer["status"]["message"]
    assert 'pss-baseline/privileged: privileged: containers "web"' in message
    assert 'pss-baseline/hostNamespaces: host namespaces: pod must not set "hostNetwork"' in (
        message
    )
    decision_id = answer["auditAnnotations"]["trustplane-decision"]
    record = wait_for(lambda: recorded(server, decision_id))
    assert record["decision"] == "deny"
    assert set(record["reasons"]) >= {"pss-baseline/privileged", "pss-baseline/hostNamespaces"}
    assert record["request"]["resource"] == {"type": "k8s::Deployment", "id": "default/agent"}
    # Queryable by rule, like any policy.
    rows = server.client.get(
        "/v1/decisions", params={"policy": "pss-baseline/privileged"}, headers=server.admin
    ).json()["decisions"]
    assert decision_id in {row["decision_id"] for row in rows}


def test_restricted_findings_are_warnings_of_at_most_120_characters(server: Server) -> None:
    baseline_only = copy.deepcopy(RESTRICTED_POD)
    del baseline_only["spec"]["securityContext"]
    baseline_only["spec"]["containers"] = [
        {"name": f"container-with-a-rather-long-name-{i}", "image": "x"} for i in range(6)
    ]
    answer = post(server, review(baseline_only, "uid-warned"))
    assert answer["allowed"] is True
    warnings = answer["warnings"]
    assert any(w.startswith("runAsNonRoot != true: ") for w in warnings)
    assert all(len(w) <= 120 for w in warnings)
    assert any(w.endswith("…") for w in warnings)


def test_namespace_modes_enforce_restricted_in_prod_and_only_audit_in_sandbox(
    server: Server,
) -> None:
    baseline_only = copy.deepcopy(RESTRICTED_POD)
    del baseline_only["spec"]["securityContext"]
    prod = post(server, review(baseline_only, "uid-prod", namespace="prod"))
    assert prod["allowed"] is False
    assert "pss-restricted/runAsNonRoot" in prod["status"]["message"]
    sandbox = post(server, review(privileged_deployment(), "uid-sandbox", namespace="sandbox"))
    assert sandbox["allowed"] is True
    assert "warnings" not in sandbox
    assert "pss-baseline/privileged" in sandbox["auditAnnotations"]["audit-violations"]
    record = wait_for(lambda: recorded(server, sandbox["auditAnnotations"]["trustplane-decision"]))
    assert record["decision"] == "allow"
    assert record["shadow"] == "deny"  # what enforcing the audited rules would answer
    assert "pss-baseline/privileged" in record["would_change"]
    findings = record["request"]["context"]["findings"]
    assert {f["mode"] for f in findings} == {"audit"}


def test_a_dry_run_is_answered_but_not_recorded(server: Server) -> None:
    answer = post(server, review(privileged_deployment(), "uid-dry", dryRun=True))
    assert answer["allowed"] is False
    decision_id = answer["auditAnnotations"]["trustplane-decision"]
    # A later review's record is committed after any the dry run could have made.
    later = post(server, review(RESTRICTED_POD, "uid-after-dry"))
    wait_for(lambda: recorded(server, later["auditAnnotations"]["trustplane-decision"]))
    assert recorded(server, decision_id) is None


def test_deletes_and_status_updates_are_allowed_without_review(server: Server) -> None:
    deletion = post(server, review(privileged_deployment(), "uid-del", operation="DELETE"))
    assert deletion["allowed"] is True
    status = post(server, review(privileged_deployment(), "uid-status", subResource="status"))
    assert status["allowed"] is True


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"", 400, "empty"),
        (b'{"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview", "request": {}}',
         422, "/apiVersion"),
        (b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}', 422, "/request"),
        (b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": '
         b'{"kind": {"kind": "Pod"}, "operation": "CREATE"}}', 422, "/request/uid"),
        (b'[1, 2]', 422, "invalid"),
    ],
)  # fmt: skip
def test_bad_reviews_get_a_clear_4xx(server: Server, body: bytes, status: int, needle: str) -> None:
    response = server.client.post(
        "/v1/admission", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert needle in response.text


def test_plain_http_is_not_served_on_the_tls_port(server: Server) -> None:
    with pytest.raises(httpx.HTTPError):
        httpx.get(server.url.replace("https", "http") + "/healthz", timeout=5)


def test_configured_exemptions_apply_until_they_expire(server: Server) -> None:
    legacy = post(server, review(privileged_deployment(), "uid-legacy", namespace="legacy"))
    assert legacy["allowed"] is False  # hostNetwork is not exempted
    assert "pss-baseline/privileged" not in legacy["status"]["message"]
    assert "pss-baseline/hostNamespaces" in legacy["status"]["message"]
    retired = post(server, review(privileged_deployment(), "uid-retired", namespace="retired"))
    assert "pss-baseline/privileged" in retired["status"]["message"]


# Objects the engine cannot read completely: refused in every namespace mode, with the field.


def privileged_pod() -> dict[str, Any]:
    """A pod pss-baseline refuses twice over (hostNetwork and a privileged container), with a
    value in most fields the shipped rules read."""
    pod = copy.deepcopy(RESTRICTED_POD)
    pod["metadata"]["labels"] = {"app": "agent", "trustplane.io/owner": "ops"}
    pod["metadata"]["annotations"] = {"trustplane.io/egress": "none"}
    spec = pod["spec"]
    spec.update(hostNetwork=True, hostPID=False, serviceAccountName="agent", os={"name": "linux"})
    spec["automountServiceAccountToken"] = False
    spec["securityContext"]["runAsUser"] = 1000
    spec["securityContext"]["sysctls"] = [{"name": "net.ipv4.tcp_syncookies", "value": "1"}]
    spec["volumes"] = [{"name": "tmp", "emptyDir": {}}]
    container = spec["containers"][0]
    container["securityContext"]["privileged"] = True
    container["securityContext"]["seccompProfile"] = {"type": "RuntimeDefault"}
    container["ports"] = [{"containerPort": 8080, "hostPort": 0}]
    container["env"] = [{"name": "MODE", "value": "agent"}]
    container["resources"] = {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {}}
    container["readinessProbe"] = {"httpGet": {"path": "/", "port": 8080}}
    container["lifecycle"] = {"preStop": {"tcpSocket": {"port": 8080}}}
    spec["initContainers"] = [{"name": "init", "image": "registry.example.com/init:1"}]
    return pod


def as_kind(pod: dict[str, Any], kind: str) -> dict[str, Any]:
    """`pod` as the pod template of a `kind` workload (itself for Pod)."""
    if kind == "Pod":
        return copy.deepcopy(pod)
    obj: dict[str, Any] = {"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": "agent"}}
    node = obj
    *outer, last = POD_PATHS[kind]
    for key in outer:
        node = node.setdefault(key, {})
    node[last] = {"metadata": copy.deepcopy(pod["metadata"]), "spec": copy.deepcopy(pod["spec"])}
    return obj


def review_of(obj: Any, uid: str, kind: str = "Pod", namespace: str = "default") -> dict[str, Any]:
    """A review of `obj` as the API server would send it for a `kind`, whatever `obj` says."""
    body = review({"kind": kind, "metadata": {"name": "agent"}}, uid, namespace=namespace)
    body["request"]["object"] = obj
    return body


def refused_for(answer: dict[str, Any], code: int, needle: str) -> None:
    assert answer["allowed"] is False, answer
    assert answer["status"]["code"] == code, answer
    assert needle in answer["status"]["message"], answer["status"]["message"]


def test_a_pod_whose_metadata_is_a_string_is_refused_naming_the_field(server: Server) -> None:
    pod = privileged_pod()
    pod["metadata"] = "agent"
    answer = post(server, review_of(pod, "uid-metadata-string"))
    refused_for(answer, 422, "object.metadata: expected an object, got a string")
    # Even where nothing is enforced: what cannot be read cannot be let through.
    sandbox = post(server, review_of(pod, "uid-metadata-sandbox", namespace="sandbox"))
    refused_for(sandbox, 422, "object.metadata: expected an object, got a string")
    record = wait_for(lambda: recorded(server, sandbox["auditAnnotations"]["trustplane-decision"]))
    assert record["decision"] == "deny"
    assert record["reasons"] == ["trustplane/unreadable-object"]


@pytest.mark.parametrize(
    ("kind", "shown"), [("Pd", '"Pd"'), (7, "7, not a string"), ("pod", '"pod"')]
)
def test_an_object_claiming_another_kind_than_the_request_is_refused(
    server: Server, kind: Any, shown: str
) -> None:
    pod = privileged_pod()
    pod["kind"] = kind
    answer = post(server, review_of(pod, f"uid-kind-{kind}"))
    refused_for(answer, 400, f'object.kind: expected "Pod" (request.kind.kind), got {shown}')


def test_a_deployment_whose_template_metadata_is_a_string_is_refused(server: Server) -> None:
    deployment = as_kind(privileged_pod(), "Deployment")
    deployment["spec"]["template"]["metadata"] = "agent"
    answer = post(server, review_of(deployment, "uid-template-metadata", kind="Deployment"))
    refused_for(answer, 422, "object.spec.template.metadata: expected an object, got a string")


@pytest.mark.parametrize("kind", sorted(POD_PATHS))
def test_every_workload_kind_refuses_a_pod_it_cannot_read(server: Server, kind: str) -> None:
    pod = privileged_pod()
    pod["spec"]["containers"][0]["securityContext"]["privileged"] = "true"
    pod["spec"]["containers"] = {"agent": pod["spec"]["containers"][0]}  # a map, not a list
    answer = post(server, review_of(as_kind(pod, kind), f"uid-every-{kind}", kind=kind))
    where = ".".join(("object", *POD_PATHS[kind], "spec", "containers"))
    refused_for(answer, 422, f"{where}: expected a list, got an object")
    template = as_kind(privileged_pod(), kind)
    if kind != "Pod":  # the template itself, not just what is in it
        node = template
        for key in POD_PATHS[kind][:-1]:
            node = node[key]
        node[POD_PATHS[kind][-1]] = ["not", "a", "template"]
        answer = post(server, review_of(template, f"uid-every-t-{kind}", kind=kind))
        where = ".".join(("object", *POD_PATHS[kind]))
        refused_for(answer, 422, f"{where}: expected an object, got a list")


def test_a_container_without_a_name_is_refused_naming_the_field(server: Server) -> None:
    pod = privileged_pod()
    del pod["spec"]["initContainers"][0]["name"]
    answer = post(server, review_of(pod, "uid-no-name"))
    refused_for(answer, 422, "object.spec.initContainers[0].name: required field is missing")
    assert "KeyError" not in answer["status"]["message"]


def test_a_flag_of_another_type_is_refused_not_read_as_false(server: Server) -> None:
    pod = privileged_pod()
    pod["spec"]["hostNetwork"] = "yes"
    pod["spec"]["containers"][0]["securityContext"]["privileged"] = 1
    answer = post(server, review_of(pod, "uid-flag-types"))
    refused_for(answer, 422, "object.spec.hostNetwork: expected a boolean, got a string")
    assert (
        "object.spec.containers[0].securityContext.privileged: expected a boolean, got an integer"
        in answer["status"]["message"]
    )


def _paths(value: Any, path: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    """Every place in `value` a sub-value sits (not the root)."""
    out: list[tuple[str | int, ...]] = [path] if path else []
    if isinstance(value, dict):
        for key, item in value.items():
            out.extend(_paths(item, (*path, key)))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            out.extend(_paths(item, (*path, index)))
    return out


def _type_of(value: Any) -> str:
    return "int" if isinstance(value, int) and not isinstance(value, bool) else type(value).__name__


WRONG_VALUES = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
    st.lists(st.one_of(st.integers(), st.text(max_size=3)), max_size=3),
    st.dictionaries(st.text(max_size=4), st.one_of(st.integers(), st.text(max_size=3)), max_size=2),
)


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, dict[str, Any], list[str]]:
    """A privileged workload of some kind with one to three sub-values replaced by a value of
    another type; the kind and the paths replaced, as the engine would name them."""
    kind = draw(st.sampled_from(sorted(POD_PATHS)))
    obj = as_kind(privileged_pod(), kind)
    chosen = draw(st.lists(st.sampled_from(_paths(obj)), min_size=1, max_size=3, unique=True))
    names = []
    for path in chosen:
        parent: Any = obj
        try:
            for key in path[:-1]:
                parent = parent[key]
            old = parent[path[-1]]
        except (KeyError, IndexError, TypeError):
            continue  # under a value an earlier replacement already took away
        new = draw(WRONG_VALUES.filter(lambda v, old=old: _type_of(v) != _type_of(old)))
        parent[path[-1]] = new
        names.append("object" + "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in path))
    return kind, obj, names


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=mutated())
def test_a_privileged_workload_mutated_anywhere_is_never_allowed_and_never_a_5xx(
    server: Server, case: tuple[str, dict[str, Any], list[str]]
) -> None:
    """Replacing sub-values by values of other types cannot make hostNetwork and a privileged
    container go away without leaving the object unreadable: the answer is a refusal — 422 or
    400 naming a replaced field, or 403 from the rules when no replaced field is one they read —
    and never a server error."""
    kind, obj, replaced = case
    response = server.client.post("/v1/admission", json=review_of(obj, "uid-fuzz", kind=kind))
    assert response.status_code == 200, response.text
    answer = response.json()["response"]
    assert answer["allowed"] is False, (obj, answer)
    status = answer["status"]
    message = status["message"].replace('["', ".").replace('"]', "")  # map keys as fields
    if status["code"] in (400, 422):
        named = [part.split(": ")[0] for part in message.split(" reviewed: ", 1)[1].split("; ")]
        assert any(n == r or n.startswith(r + ".") or n.startswith(r + "[")
                   for n in named for r in replaced), (replaced, message)  # fmt: skip
    else:
        assert status["code"] == 403, answer
        assert "pss-baseline/privileged" in message or "pss-baseline/hostNamespaces" in message
