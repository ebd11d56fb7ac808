"""`trustplane policy new`: a bundle that validates and passes its own tests, to edit from.

The files are the smallest complete bundle: a schema, one annotated policy, the entities it
reads, tests that pin both an allow and the default deny, and the bundle's settings.
"""

from __future__ import annotations

import json
from pathlib import Path

_SCHEMA = """\
// Every request's context, as the enforcement points send it.
type RequestContext = {
  mfa: Bool,
  auth_age_seconds: Long,
};

// People, and the roles they are members of.
entity Role;
entity User in [Role];

// What they act on.
entity Document {
  owner: User,
};

action "documents:read", "documents:write" appliesTo {
  principal: [User],
  resource: [Document],
  context: RequestContext,
};
"""

_POLICY = """\
// Readers may read; owners may also write. Everything not permitted is denied.
@id("readers-read-documents")
@owner("{name}")
@description("Members of the reader role may read any document.")
permit (
  principal in Role::"reader",
  action == Action::"documents:read",
  resource
);

@id("owners-write-their-documents")
@owner("{name}")
@description("A document's owner may change it, after a second factor.")
permit (
  principal,
  action == Action::"documents:write",
  resource
)
when { resource.owner == principal && context.mfa };
"""

_TESTS = """\
# Each case: a request and the answer the bundle must give. `trustplane policy test DIR`.
tests:
  - name: a reader may read
    request:
      principal: {type: User, id: alice}
      action: "documents:read"
      resource: {type: Document, id: handbook}
      context: {mfa: false, auth_age_seconds: 60}
    expect: allow
    determining: [readers-read-documents]

  - name: the owner may write with a second factor
    request:
      principal: {type: User, id: bob}
      action: "documents:write"
      resource: {type: Document, id: handbook}
      context: {mfa: true, auth_age_seconds: 60}
    expect: allow
    determining: [owners-write-their-documents]

  - name: a reader who does not own it may not write (default deny)
    request:
      principal: {type: User, id: alice}
      action: "documents:write"
      resource: {type: Document, id: handbook}
      context: {mfa: true, auth_age_seconds: 60}
    expect: deny
    determining: []
"""


def _entities() -> list[dict[str, object]]:
    return [
        {"uid": {"type": "Role", "id": "reader"}, "attrs": {}, "parents": []},
        {"uid": {"type": "User", "id": "alice"}, "attrs": {}, "parents": [_role("reader")]},
        {"uid": {"type": "User", "id": "bob"}, "attrs": {}, "parents": []},
        {
            "uid": {"type": "Document", "id": "handbook"},
            "attrs": {"owner": {"__entity": {"type": "User", "id": "bob"}}},
            "parents": [],
        },
    ]


def _role(name: str) -> dict[str, str]:
    return {"type": "Role", "id": name}


def write_scaffold(directory: Path, name: str) -> list[str]:
    """Create `directory` with a starter bundle; returns the files written, relative to it."""
    files = {
        "trustplane.yaml": f"name: {json.dumps(name)}\ndescription: A new policy bundle.\n",
        "schema.cedarschema": _SCHEMA,
        "policies.cedar": _POLICY.replace("{name}", name.replace('"', "")),
        "entities.json": json.dumps(_entities(), indent=2) + "\n",
        "tests/policies.yaml": _TESTS,
    }
    for relative, text in files.items():
        path = directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return list(files)
