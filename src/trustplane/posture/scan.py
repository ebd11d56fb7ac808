"""`trustplane scan`: files and directories checked with the admission webhook's rule packs
(Kubernetes manifests), the pipeline checks (GitHub Actions, GitLab CI) and detect-secrets."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trustplane.posture import estate, pipelines
from trustplane.posture.engine import Engine, Finding
from trustplane.posture.estate import Located
from trustplane.posture.rules import Severity
from trustplane.posture.secrets import find_secrets
from trustplane.posture.workloads import pod_of
from trustplane.yaml_lines import Document, YamlError, read_documents

YAML_SUFFIXES = (".yaml", ".yml")
SKIP_DIRS = {".git", ".venv", "node_modules", "__pycache__", ".tox", ".mypy_cache"}
MAX_FILE_BYTES = 5 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ScanFinding:
    file: str
    line: int
    rule: str
    severity: Severity
    message: str
    fix: str
    description: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "line": self.line,
            "rule": self.rule,
            "severity": self.severity.label,
            "message": self.message,
            "fix": self.fix,
        }


@dataclass
class ScanResult:
    files: int = 0
    findings: list[ScanFinding] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # files that could not be read or parsed
    # Unrendered templates (Helm's `{{ }}`): not YAML until rendered, so not an error either.
    skipped: list[str] = field(default_factory=list)


def collect(paths: Iterable[Path]) -> list[Path]:
    """Every file under `paths` (directories walked, VCS and tool caches skipped)."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            for root, dirs, names in os.walk(path):
                dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
                files.extend(Path(root) / n for n in sorted(names))
        else:
            files.append(path)
    return files


class Scanner:
    def __init__(
        self,
        engine: Engine,
        descriptions: dict[str, str],
        secrets: bool = True,
        estate_checks: bool = False,
    ) -> None:
        """`estate_checks`: also run the checks that need every manifest at once
        (`posture/estate.py`), after the last file."""
        self._engine = engine
        self._descriptions = descriptions
        self._secrets = secrets
        self._estate_checks = estate_checks
        self._located: list[Located] = []

    def scan(
        self, paths: Iterable[Path], progress: Callable[[Path], None] | None = None
    ) -> ScanResult:
        result = ScanResult()
        for path in collect(paths):
            if progress is not None:
                progress(path)
            result.files += 1
            try:
                self._scan_file(path, result)
            except OSError as exc:
                result.errors.append(f"{path}: cannot read: {exc.strerror or exc}")
        if self._estate_checks:
            for found in estate.check(self._located):
                result.findings.append(
                    ScanFinding(
                        found.file,
                        found.line,
                        found.rule.id,
                        found.rule.severity,
                        found.message,
                        found.rule.fix,
                        found.rule.description,
                    )
                )
            self._located = []
        result.findings.sort(key=lambda f: (f.file, f.line, f.rule))
        return result

    def _scan_file(self, path: Path, result: ScanResult) -> None:
        if not path.exists():
            raise FileNotFoundError(2, "no such file or directory")
        if path.stat().st_size > MAX_FILE_BYTES:
            return
        name = path.as_posix()
        if self._secrets:
            for hit in find_secrets(path):
                result.findings.append(
                    ScanFinding(
                        name,
                        hit.line,
                        "secrets/detected",
                        Severity.HIGH,
                        f"possible secret ({', '.join(hit.types)})",
                        "Remove it from the file, rotate it, and load it from a secret store.",
                        "Secrets do not belong in files under version control.",
                    )
                )
        if not name.endswith(YAML_SUFFIXES):
            return
        text = path.read_text(errors="replace")
        try:
            documents = read_documents(text, name)
        except YamlError as exc:
            if "{{" in text:
                result.skipped.append(
                    f"{name}: not checked: an unrendered template (scan `helm template` output)"
                )
            else:
                result.errors.append(str(exc))
            return
        for document in documents:
            result.findings.extend(self._document(name, document))

    def _document(self, name: str, document: Document) -> Iterator[ScanFinding]:
        data = document.data
        if pipelines.is_gitlab_ci(name) and isinstance(data, dict):
            found = pipelines.gitlab_ci(document)
        elif pipelines.is_github_workflow(name, data):
            found = pipelines.github_workflow(document)
        else:
            yield from self._manifests(name, document, data, [])
            return
        for f in found:
            yield ScanFinding(
                name, f.line, f.rule.id, f.rule.severity, f.message, f.rule.fix, f.rule.description
            )

    def _manifests(
        self, name: str, document: Document, data: Any, where: list[str | int]
    ) -> Iterator[ScanFinding]:
        if not isinstance(data, dict) or not isinstance(data.get("kind"), str):
            return
        if data["kind"].endswith("List") and isinstance(data.get("items"), list):
            for i, item in enumerate(data["items"]):
                yield from self._manifests(name, document, item, [*where, "items", i])
            return
        if self._estate_checks:
            self._located.append(Located(data, name, document.line_of(where)))
        for finding in self._engine.evaluate(data):
            yield ScanFinding(
                name,
                _line(document, where, data, finding),
                finding.rule_id,
                finding.severity,
                f"{_title(data)}: {finding.message}",
                finding.fix,
                self._descriptions.get(finding.rule_id, ""),
            )


def _title(obj: dict[str, Any]) -> str:
    metadata = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    assert isinstance(metadata, dict)
    return f"{obj.get('kind')} {metadata.get('name', '?')}"


def _line(document: Document, where: list[str | int], obj: dict[str, Any], f: Finding) -> int:
    """The line of the first offending container if there is one, else of the pod spec, else
    of the object."""
    pod = pod_of(obj)
    if pod is None:
        return document.line_of(where)
    spec_path: list[str | int] = [*where, *pod.path, "spec"]
    for key in ("initContainers", "containers", "ephemeralContainers"):
        items = pod.spec.get(key)
        if not isinstance(items, list):
            continue
        for i, container in enumerate(items):
            if isinstance(container, dict) and container.get("name") in f.offenders:
                return document.line_of([*spec_path, key, i])
    return document.line_of(spec_path)
