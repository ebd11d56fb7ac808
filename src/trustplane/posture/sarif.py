"""SARIF 2.1.0 output of scan findings, for code-scanning upload (GitHub, GitLab)."""

from __future__ import annotations

from typing import Any

from trustplane import __version__
from trustplane.posture.rules import Severity
from trustplane.posture.scan import ScanFinding

SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
LEVEL = {Severity.LOW: "note", Severity.MEDIUM: "warning", Severity.HIGH: "error",
         Severity.CRITICAL: "error"}  # fmt: skip
# GitHub code scanning ranks security results by this property (0.1–10).
SECURITY_SEVERITY = {Severity.LOW: "3.0", Severity.MEDIUM: "5.5", Severity.HIGH: "8.0",
                     Severity.CRITICAL: "9.5"}  # fmt: skip


def sarif(findings: list[ScanFinding]) -> dict[str, Any]:
    rules: dict[str, dict[str, Any]] = {}
    for f in findings:
        if f.rule not in rules:
            rules[f.rule] = {
                "id": f.rule,
                "shortDescription": {"text": f.description or f.rule},
                "help": {"text": f.fix or f.description or f.rule},
                "defaultConfiguration": {"level": LEVEL[f.severity]},
                "properties": {
                    "security-severity": SECURITY_SEVERITY[f.severity],
                    "tags": ["security"],
                },
            }
    index = {rule_id: i for i, rule_id in enumerate(rules)}
    results = [
        {
            "ruleId": f.rule,
            "ruleIndex": index[f.rule],
            "level": LEVEL[f.severity],
            "message": {"text": f"{f.message}. Fix: {f.fix}" if f.fix else f.message},
            "locations": [
                {
                    "physicalLocation": {
                        "artifactLocation": {"uri": f.file.removeprefix("./")},
                        "region": {"startLine": max(f.line, 1)},
                    }
                }
            ],
        }
        for f in findings
    ]
    return {
        "$schema": SCHEMA,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "trustplane",
                        "version": __version__,
                        "rules": list(rules.values()),
                    }
                },
                "results": results,
            }
        ],
    }
