"""Pipeline checks on GitHub Actions workflows and GitLab CI files, and placeholder filtering
of detected secrets."""

from __future__ import annotations

import textwrap
from pathlib import Path

from trustplane.posture.pipelines import github_workflow, gitlab_ci
from trustplane.posture.secrets import find_secrets, is_placeholder
from trustplane.yaml_lines import read_documents

SHA = "e3dd6a429d7300a6a4c196c26e071d42e0343502"


def workflow(text: str) -> set[tuple[str, int]]:
    (doc,) = read_documents(textwrap.dedent(text), "deploy.yml")
    return {(f.rule.id, f.line) for f in github_workflow(doc)}


def test_a_workflow_done_right_has_no_findings() -> None:
    assert (
        workflow(f"""\
        permissions: {{contents: read}}
        jobs:
          deploy:
            permissions: {{id-token: write, contents: read}}
            steps:
              - uses: actions/checkout@v4
              - uses: ./.github/actions/local
              - uses: docker://alpine@sha256:{"a" * 64}
              - uses: aws-actions/configure-aws-credentials@{SHA}
                with: {{role-to-assume: "arn:aws:iam::1:role/deploy", aws-region: eu-west-1}}
        """)
        == set()
    )


def test_job_permissions_replace_the_workflows() -> None:
    found = workflow(f"""\
        permissions: {{id-token: write}}
        jobs:
          deploy:
            permissions: {{contents: read}}
            steps:
              - uses: azure/login@{SHA}
                with: {{client-id: x, tenant-id: y, subscription-id: z}}
        """)
    assert found == {("ci/missing-id-token-permission", 6)}


def test_unpinned_third_party_actions_and_long_lived_keys() -> None:
    found = workflow("""\
        permissions: {contents: read}
        jobs:
          build:
            permissions: write-all
            steps:
              - uses: some-org/tool@main
              - uses: google-github-actions/auth@v2
                with:
                  credentials_json: ${{ secrets.GCP_KEY }}
        """)
    assert found == {
        ("ci/broad-permissions", 4),
        ("ci/unpinned-action", 6),
        ("ci/unpinned-action", 7),
        ("ci/long-lived-cloud-keys", 9),
    }


def test_literal_credentials_in_env_but_not_references_or_examples() -> None:
    found = workflow("""\
        permissions: {contents: read}
        env:
          AWS_ACCESS_KEY_ID: AKIAZ3MSJV4WWNKWW5FG
          DOCS_KEY: AKIAIOSFODNN7EXAMPLE
          AWS_SECRET_ACCESS_KEY: ${{ secrets.AWS_SECRET_ACCESS_KEY }}
        jobs:
          test:
            steps:
              - run: make
                env: {AZURE_CLIENT_SECRET: hunter2}
        """)
    assert found == {("ci/static-cloud-credentials", 3), ("ci/static-cloud-credentials", 10)}


def test_gitlab_literal_keys_and_web_identity_without_id_tokens() -> None:
    (doc,) = read_documents(
        textwrap.dedent("""\
        variables:
          AWS_SECRET_ACCESS_KEY: {value: abcdef, description: oops}
        deploy:
          id_tokens: {AWS_TOKEN: {aud: https://sts.amazonaws.com}}
          script: [aws sts assume-role-with-web-identity --web-identity-token $AWS_TOKEN]
        legacy:
          script:
            - aws configure set aws_secret_access_key "$KEY"
            - aws sts assume-role-with-web-identity
        """),
        ".gitlab-ci.yml",
    )
    found = {(f.rule.id, f.line) for f in gitlab_ci(doc)}
    assert found == {
        ("ci/static-cloud-credentials", 2),
        ("ci/missing-id-token-permission", 6),
        ("ci/long-lived-cloud-keys", 8),
    }


def test_secrets_are_found_by_line_without_placeholders(tmp_path: Path) -> None:
    path = tmp_path / "settings.env"
    path.write_text(
        "AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE\n"
        "AWS_ACCESS_KEY_ID=AKIAZ3MSJV4WWNKWW5FG\n"
        "GITHUB_TOKEN=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\n"
        "password=<your password here>\n"
    )
    lines = [hit.line for hit in find_secrets(path)]
    assert lines == [2, 3]
    assert is_placeholder("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    assert not is_placeholder("q8Zt2LmX9vB4nR7kW1pY6sD3")
