"""Agreement with the upstream Pod Security Admission fixtures, per level and version.

The fixtures are laid out `<level>/<version>/<pass|fail>/<check><n>.yaml`: a pass pod must be
admitted by `pss-<level>@<version>`, a fail pod refused with `<check>` among the reasons (a
pod that cannot be read or a rule that fails to evaluate agrees with neither).
Run `python -m trustplane.posture.conformance DIR` for the table.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from trustplane.posture.engine import Engine, select
from trustplane.posture.packs import load_pack
from trustplane.posture.rules import minor

_CHECK = re.compile(r"^(?P<check>.+?)\d+$")


@dataclass
class Agreement:
    level: str
    version: str
    total: int = 0
    agreed: int = 0
    disagreements: list[str] = field(default_factory=list)

    @property
    def percent(self) -> float:
        return 100.0 * self.agreed / self.total if self.total else 100.0


def run(corpus: Path) -> list[Agreement]:
    """One Agreement per level and version directory under `corpus`."""
    results = []
    for level_dir in sorted(p for p in corpus.iterdir() if p.is_dir()):
        rules = load_pack(f"pss-{level_dir.name}").rules
        versions = sorted(
            (p for p in level_dir.iterdir() if p.is_dir()), key=lambda p: minor(p.name)
        )
        for version_dir in versions:
            engine = Engine(select(rules, minor(version_dir.name)))
            result = Agreement(level_dir.name, version_dir.name)
            for path in sorted(version_dir.glob("*/*.yaml")):
                result.total += 1
                problem = _disagreement(engine, path)
                if problem is None:
                    result.agreed += 1
                else:
                    result.disagreements.append(f"{path.relative_to(corpus)}: {problem}")
            results.append(result)
    return results


def _disagreement(engine: Engine, path: Path) -> str | None:
    findings = engine.evaluate(yaml.safe_load(path.read_text()))
    errors = [f for f in findings if f.error]
    if errors:  # a fail fixture refused only because it cannot be read does not agree
        return "not evaluated: " + errors[0].message
    if path.parent.name == "pass":
        if findings:
            return "refused: " + "; ".join(f.message for f in findings)
        return None
    match = _CHECK.match(path.stem)
    expected = (match.group("check") if match else path.stem).lower()
    if not any((f.check or "").lower() == expected for f in findings):
        named = ", ".join(sorted({f.check or f.rule_id for f in findings})) or "nothing"
        return f"expected {expected} among the reasons, got {named}"
    return None


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m trustplane.posture.conformance CORPUS_DIR", file=sys.stderr)
        return 2
    results = run(Path(argv[0]))
    for r in results:
        print(f"{r.level:<11} {r.version:<6} {r.agreed:>4}/{r.total:<4} {r.percent:6.2f}%")
        for line in r.disagreements:
            print(f"    {line}")
    total = sum(r.total for r in results)
    agreed = sum(r.agreed for r in results)
    print(f"all                {agreed}/{total}")
    return 0 if agreed == total else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
