"""CI pipeline checks: GitHub Actions workflows and GitLab CI files.

These look at step structure (which action, with which inputs, under which permissions) and
need the line of each step, which CEL cannot give (no indexes in its comprehensions), so they
are written here, each with a rule id, severity and fix like the CEL rules.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from trustplane.posture.rules import Severity
from trustplane.yaml_lines import Document

SHA = re.compile(r"^[0-9a-f]{40}$")
AWS_KEY = re.compile(r"\b(AKIA|ASIA)[A-Z0-9]{16}\b")
FIRST_PARTY = ("actions/", "github/")
# Cloud login actions: inputs that carry long-lived keys, and inputs of the OIDC way.
CLOUD_LOGINS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "aws-actions/configure-aws-credentials": (
        ("aws-access-key-id", "aws-secret-access-key"),
        ("role-to-assume",),
    ),
    "google-github-actions/auth": (("credentials_json",), ("workload_identity_provider",)),
    "azure/login": (("creds",), ("client-id",)),
}
LONG_LIVED_LOGIN = re.compile(
    r"aws configure set aws_secret_access_key|az login .*(--password|-p )|"
    r"gcloud auth activate-service-account .*--key-file"
)
STATIC_CREDENTIAL_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AZURE_CLIENT_SECRET")


@dataclass(frozen=True, slots=True)
class PipelineRule:
    id: str
    severity: Severity
    description: str
    fix: str


RULES = {
    r.id: r
    for r in (
        PipelineRule(
            "ci/unpinned-action",
            Severity.MEDIUM,
            "Third-party actions are pinned to a full commit SHA (a tag can be moved).",
            "Pin the action: uses: owner/repo@<40-character commit SHA> # vX.Y",
        ),
        PipelineRule(
            "ci/long-lived-cloud-keys",
            Severity.HIGH,
            "Deploy steps log in to the cloud with OIDC federation, not stored long-lived keys.",
            "Use OIDC: role-to-assume (AWS), workload_identity_provider (GCP), client-id and "
            "tenant-id (Azure), with permissions id-token: write.",
        ),
        PipelineRule(
            "ci/missing-id-token-permission",
            Severity.HIGH,
            "An OIDC cloud login needs `permissions: id-token: write` on its job or workflow.",
            "Grant the job an OIDC token: permissions: {id-token: write, contents: read} "
            "(GitHub Actions) or id_tokens: (GitLab CI).",
        ),
        PipelineRule(
            "ci/broad-permissions",
            Severity.MEDIUM,
            "The workflow token has only the permissions the jobs need.",
            "Declare permissions explicitly (start from contents: read); never write-all.",
        ),
        PipelineRule(
            "ci/static-cloud-credentials",
            Severity.CRITICAL,
            "No cloud credentials are written into pipeline files.",
            "Remove the credential, rotate it, and use OIDC federation or a CI secret.",
        ),
    )
}


@dataclass(frozen=True, slots=True)
class PipelineFinding:
    rule: PipelineRule
    line: int
    message: str


def is_github_workflow(path: str, data: Any) -> bool:
    return "/.github/workflows/" in "/" + path and isinstance(data, dict) and "jobs" in data


def is_gitlab_ci(path: str) -> bool:
    return path.endswith((".gitlab-ci.yml", ".gitlab-ci.yaml"))


def github_workflow(doc: Document) -> list[PipelineFinding]:
    data: dict[str, Any] = doc.data
    found: list[PipelineFinding] = []
    top = data.get("permissions")
    if top is None:
        found.append(
            _f(
                "ci/broad-permissions",
                doc.line,
                "workflow sets no `permissions`: the "
                "token gets the repository's default, often read-write",
            )
        )
    elif top == "write-all":
        found.append(
            _f(
                "ci/broad-permissions",
                doc.line_of(["permissions"]),
                "workflow grants `permissions: write-all`",
            )
        )
    found += _literal_env(doc, ["env"], data.get("env"))
    jobs = _mapping(data.get("jobs"))
    for job_id, job in jobs.items():
        if not isinstance(job, dict):
            continue
        perms = job.get("permissions", top)
        if job.get("permissions") == "write-all":
            found.append(
                _f(
                    "ci/broad-permissions",
                    doc.line_of(["jobs", job_id, "permissions"]),
                    f"job {job_id!r} grants `permissions: write-all`",
                )
            )
        found += _literal_env(doc, ["jobs", job_id, "env"], job.get("env"))
        steps = job.get("steps")
        steps = steps if isinstance(steps, list) else []
        for i, step in enumerate(steps):
            if isinstance(step, dict):
                found += _step(doc, job_id, i, step, perms)
    return found


def _step(
    doc: Document, job_id: str, index: int, step: dict[str, Any], perms: Any
) -> Iterator[PipelineFinding]:
    where: list[str | int] = ["jobs", job_id, "steps", index]
    name = step.get("name") or f"step {index + 1}"
    yield from _literal_env(doc, [*where, "env"], step.get("env"))
    uses = step.get("uses")
    if not isinstance(uses, str):
        return
    action, _, ref = uses.partition("@")
    line = doc.line_of([*where, "uses"])
    local = uses.startswith(("./", "docker://"))
    if not local and not action.lower().startswith(FIRST_PARTY) and not SHA.match(ref):
        yield _f(
            "ci/unpinned-action",
            line,
            f"job {job_id!r} {name}: {uses} is not pinned to a commit SHA",
        )
    login = CLOUD_LOGINS.get("/".join(action.lower().split("/")[:2]))
    if login is None:
        return
    inputs = _mapping(step.get("with"))
    keys, oidc = login
    used_keys = [k for k in keys if k in inputs]
    if used_keys:
        yield _f(
            "ci/long-lived-cloud-keys",
            doc.line_of([*where, "with", used_keys[0]]),
            f"job {job_id!r} {name}: {action} logs in with long-lived keys "
            f"({', '.join(used_keys)}) instead of OIDC",
        )
    elif any(k in inputs for k in oidc) and not _grants_id_token(perms):
        yield _f(
            "ci/missing-id-token-permission",
            line,
            f"job {job_id!r} {name}: {action} uses OIDC but the job lacks "
            "`permissions: id-token: write`",
        )


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _grants_id_token(perms: Any) -> bool:
    return perms == "write-all" or (isinstance(perms, dict) and perms.get("id-token") == "write")


def gitlab_ci(doc: Document) -> list[PipelineFinding]:
    data: dict[str, Any] = doc.data
    found = _literal_env(doc, ["variables"], data.get("variables"))
    for job_id, job in data.items():
        if not isinstance(job, dict) or job_id.startswith("."):
            continue
        found += _literal_env(doc, [job_id, "variables"], job.get("variables"))
        script = job.get("script")
        lines = script if isinstance(script, list) else [script]
        text = "\n".join(str(s) for s in lines if s is not None)
        if "assume-role-with-web-identity" in text and "id_tokens" not in job:
            found.append(
                _f(
                    "ci/missing-id-token-permission",
                    doc.line_of([job_id]),
                    f"job {job_id!r} assumes a role with a web identity but declares "
                    "no `id_tokens`",
                )
            )
        for i, command in enumerate(lines):
            if isinstance(command, str) and LONG_LIVED_LOGIN.search(command):
                where: list[str | int] = [job_id, "script"]
                if isinstance(script, list):
                    where.append(i)
                found.append(
                    _f(
                        "ci/long-lived-cloud-keys",
                        doc.line_of(where),
                        f"job {job_id!r} logs in to the cloud with long-lived keys",
                    )
                )
    return found


def _literal_env(doc: Document, where: list[str | int], env: Any) -> list[PipelineFinding]:
    """Cloud credentials written as literal values (not `${{ secrets.X }}` / `$VAR`)."""
    if not isinstance(env, dict):
        return []
    found = []
    for key, value in env.items():
        if isinstance(value, dict):  # GitLab's {value: ..., description: ...}
            value = value.get("value")
        if not isinstance(value, str) or not value or "$" in value:
            continue
        if "example" in value.lower():
            continue
        if AWS_KEY.search(value) or str(key).upper() in STATIC_CREDENTIAL_VARS:
            found.append(
                _f(
                    "ci/static-cloud-credentials",
                    doc.line_of([*where, str(key)]),
                    f"{key} holds a literal cloud credential",
                )
            )
    return found


def _f(rule: str, line: int, message: str) -> PipelineFinding:
    return PipelineFinding(RULES[rule], line, message)
