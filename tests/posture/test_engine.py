"""The engine: pods found in every workload kind, messages naming the offender, modes,
exemptions that expire, and fail-closed evaluation."""

from __future__ import annotations

import copy
import datetime as dt
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from trustplane.posture.engine import Engine, select
from trustplane.posture.packs import PackRef, load_pack, selection
from trustplane.posture.rules import Mode, load_rules
from trustplane.posture.workloads import POD_PATHS

RESTRICTED = Engine(select(load_pack("pss-restricted").rules, None))


def pod(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"containers": [{"name": "app", "image": "registry.k8s.io/pause"}]}
    base.update(spec)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": base}


def wrap(manifest: dict[str, Any], kind: str) -> dict[str, Any]:
    """`manifest`'s pod as the pod template of a `kind` workload."""
    if kind == "Pod":
        return copy.deepcopy(manifest)
    template = {"metadata": manifest["metadata"], "spec": manifest["spec"]}
    obj: dict[str, Any] = {"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": "w"}}
    node = obj
    path = POD_PATHS[kind]
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = copy.deepcopy(template)
    return obj


security = st.fixed_dictionaries(
    {},
    optional={
        "privileged": st.booleans(),
        "allowPrivilegeEscalation": st.booleans(),
        "runAsNonRoot": st.booleans(),
        "runAsUser": st.sampled_from([0, 1000]),
        "procMount": st.sampled_from(["Default", "Unmasked"]),
        "capabilities": st.fixed_dictionaries(
            {},
            optional={
                "add": st.lists(st.sampled_from(["NET_BIND_SERVICE", "SYS_ADMIN", "CHOWN"])),
                "drop": st.lists(st.sampled_from(["ALL", "NET_RAW"])),
            },
        ),
        "seccompProfile": st.fixed_dictionaries(
            {"type": st.sampled_from(["RuntimeDefault", "Unconfined", "Localhost"])}
        ),
    },
)
containers = st.lists(
    st.builds(
        lambda i, sc, port: {
            "name": f"c{i}",
            "image": "registry.k8s.io/pause",
            "securityContext": sc,
            **({"ports": [{"containerPort": 80, "hostPort": port}]} if port else {}),
        },
        st.integers(0, 99),
        security,
        st.sampled_from([0, 0, 8080]),
    ),
    min_size=1,
    max_size=4,
    unique_by=lambda c: c["name"],
)
pods = st.builds(
    lambda cs, host_network, volumes, pod_sc: pod(
        containers=cs, hostNetwork=host_network, volumes=volumes, securityContext=pod_sc
    ),
    containers,
    st.booleans(),
    st.lists(
        st.sampled_from([{"name": "h", "hostPath": {"path": "/"}}, {"name": "e", "emptyDir": {}}]),
        max_size=2,
        unique_by=lambda v: v["name"],
    ),
    security.map(lambda sc: {k: v for k, v in sc.items() if k in ("runAsNonRoot", "runAsUser")}),
)


@settings(max_examples=60, deadline=None)
@given(pods, st.sampled_from(sorted(POD_PATHS)))
def test_a_workload_gets_the_verdict_of_its_bare_pod(manifest: dict[str, Any], kind: str) -> None:
    bare = {(f.rule_id, f.message) for f in RESTRICTED.evaluate(manifest)}
    wrapped = {(f.rule_id, f.message) for f in RESTRICTED.evaluate(wrap(manifest, kind))}
    assert wrapped == bare


def test_messages_name_the_offending_containers_and_where_the_pod_is() -> None:
    privileged = {"name": "bad", "image": "x", "securityContext": {"privileged": True}}
    manifest = pod(containers=[{"name": "good", "image": "x"}, privileged])
    (finding,) = [
        f for f in RESTRICTED.evaluate(wrap(manifest, "CronJob")) if f.check == "privileged"
    ]
    assert finding.message == (
        'privileged: containers "bad" must not set securityContext.privileged=true'
    )
    assert finding.offenders == ("bad",)
    assert finding.path == "spec.jobTemplate.spec.template.spec"
    assert finding.fix


def test_objects_that_run_no_pod_are_not_reviewed_by_pod_rules() -> None:
    assert RESTRICTED.evaluate({"kind": "Service", "metadata": {"name": "s"}}) == []


def test_a_workload_whose_pod_cannot_be_read_fails_every_pod_rule() -> None:
    findings = RESTRICTED.evaluate({"kind": "Deployment", "spec": "nonsense"})
    assert findings and all(f.error for f in findings)
    assert {f.rule_id for f in findings} == {s.rule.id for s in RESTRICTED.selected}
    assert findings[0].path == "spec.template.spec"
    assert findings[0].message.endswith("object.spec: expected an object, got a string")


def test_null_fields_count_as_unset() -> None:
    manifest = pod(securityContext=None, hostNetwork=None)
    manifest["spec"]["containers"][0]["securityContext"] = None
    checks = {f.check for f in RESTRICTED.evaluate(manifest)}
    assert not any(f.error for f in RESTRICTED.evaluate(manifest))
    assert "hostNamespaces" not in checks
    assert "runAsNonRoot" in checks


def test_versions_select_the_check_in_force() -> None:
    rules = load_pack("pss-restricted").rules
    manifest = pod(securityContext={"runAsNonRoot": True, "runAsUser": 0})
    at_1_22 = {f.check for f in Engine(select(rules, 22)).evaluate(manifest)}
    at_1_23 = {f.check for f in Engine(select(rules, 23)).evaluate(manifest)}
    assert "runAsUser" not in at_1_22
    assert "runAsUser" in at_1_23


def test_mode_is_capped_by_the_selection_and_the_strongest_pack_wins() -> None:
    manifest = pod(hostNetwork=True, containers=[{"name": "a", "image": "x"}])
    chosen = selection(
        [
            (PackRef.parse("pss-baseline@v1.30"), Mode.ENFORCE),
            (PackRef.parse("pss-restricted"), Mode.WARN),
        ]
    )
    modes = {f.check: f.mode for f in Engine(chosen).evaluate(manifest)}
    assert modes["hostNamespaces"] is Mode.ENFORCE  # baseline, enforced
    assert modes["allowPrivilegeEscalation"] is Mode.WARN  # restricted only: warned


RULE = """\
id: t/no-host-network
description: d
severity: high
match: {kinds: [Pod]}
expression: "!(has(spec.hostNetwork) && spec.hostNetwork)"
message: pod must not use the host network
exemptions:
  - owner: platform-team
    expires: 2030-01-31
    reason: node agents until the CNI migration
    namespaces: [kube-system]
  - owner: sre
    expires: 2020-01-01
    reason: expired long ago
    labels: {app: legacy}
"""


def test_exemptions_apply_until_they_expire() -> None:
    engine = Engine(select(load_rules(RULE, "r.yaml"), None))
    manifest = pod(hostNetwork=True)
    manifest["metadata"]["labels"] = {"app": "legacy"}
    today = dt.date(2029, 6, 1)
    assert engine.evaluate(manifest, namespace="kube-system", today=today) == []
    assert engine.evaluate(manifest, namespace="kube-system", today=dt.date(2030, 2, 1))
    # The label exemption expired in 2020: it no longer applies anywhere.
    assert engine.evaluate(manifest, namespace="default", today=today)


def test_a_rule_that_cannot_be_evaluated_is_a_violation() -> None:
    broken = RULE.replace('"!(has(spec.hostNetwork) && spec.hostNetwork)"', "spec.nodeName == ''")
    (finding,) = Engine(select(load_rules(broken, "r.yaml"), None)).evaluate(pod())
    assert finding.error
    assert finding.mode is Mode.ENFORCE
    assert finding.message == (
        "rule could not be evaluated: object.spec.nodeName is not set"
        " (the rule reads spec.nodeName unguarded)"
    )
    not_bool = RULE.replace('"!(has(spec.hostNetwork) && spec.hostNetwork)"', "\"'text'\"")
    (finding,) = Engine(select(load_rules(not_bool, "r.yaml"), None)).evaluate(pod())
    assert "expression gave str" in finding.message


def test_a_field_a_rule_reads_unguarded_is_named_where_it_is_missing() -> None:
    """CEL says only `KeyError('imagePullPolicy')`; the message says which container lacks it,
    in whichever workload the pod sits."""
    rule = RULE.replace(
        '"!(has(spec.hostNetwork) && spec.hostNetwork)"',
        "\"containers.all(c, c.imagePullPolicy == 'Always')\"",
    )
    engine = Engine(select(load_rules(rule, "r.yaml"), None))
    manifest = pod(initContainers=[{"name": "init", "imagePullPolicy": "Always"}, {"name": "x"}])
    manifest["spec"]["containers"][0]["imagePullPolicy"] = "Always"
    (finding,) = engine.evaluate(wrap(manifest, "CronJob"))
    assert finding.error
    assert finding.message == (
        "rule could not be evaluated: object.spec.jobTemplate.spec.template.spec"
        ".initContainers[1].imagePullPolicy is not set (the rule reads c.imagePullPolicy unguarded)"
    )
    nested = RULE.replace(
        '"!(has(spec.hostNetwork) && spec.hostNetwork)"',
        "\"spec.volumes.all(v, v.emptyDir['medium'] == '')\"",
    )
    engine = Engine(select(load_rules(nested, "r.yaml"), None))
    manifest = pod(
        volumes=[{"name": "a", "emptyDir": {"medium": ""}}, {"name": "b", "emptyDir": {}}]
    )
    (finding,) = engine.evaluate(manifest)
    assert "object.spec.volumes[1].emptyDir.medium is not set" in finding.message


def test_rules_can_match_kinds_other_than_pods() -> None:
    rule = """\
id: t/cm
description: d
severity: low
match: {kinds: [ConfigMap]}
expression: "!has(object.data) || !object.data.exists(k, k == 'password')"
message: configmap holds a password
"""
    engine = Engine(select(load_rules(rule, "r.yaml"), None))
    assert engine.evaluate({"kind": "ConfigMap", "data": {"password": "x"}})
    assert engine.evaluate({"kind": "ConfigMap", "data": {"user": "x"}}) == []
    assert engine.evaluate(pod()) == []


def test_rules_reaching_containers_through_spec_still_see_them() -> None:
    rule = """\
id: t/through-spec
description: d
severity: low
match: {kinds: [Pod]}
expression: "spec.containers.all(c, c.name != 'app') && size(spec) > 0"
message: no container may be called app
"""
    engine = Engine(select([*load_rules(rule, "r.yaml"), *load_pack("pss-baseline").rules], None))
    assert [f.rule_id for f in engine.evaluate(pod())] == ["t/through-spec"]
    assert engine.evaluate(pod(containers=[{"name": "web", "image": "x"}])) == []


def test_values_cel_cannot_hold_fail_closed_and_yaml_dates_are_strings() -> None:
    manifest = pod()
    manifest["metadata"]["labels"] = {"since": dt.date(2024, 1, 1)}
    assert [f for f in RESTRICTED.evaluate(manifest) if f.error] == []
    manifest["spec"]["weird"] = {1, 2}  # no JSON value is a set
    findings = RESTRICTED.evaluate(manifest)
    assert findings and all(f.error for f in findings)
    assert "cannot be read" in findings[0].message
