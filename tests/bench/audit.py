"""Known vulnerabilities in the locked dependencies: pip-audit against each hashed lock.

    .venv/bin/python tests/bench/audit.py [--service pypi|osv] [LOCK ...]

Audits requirements/app.lock, worker.lock and dev.lock (or the locks named) exactly as pinned,
without installing anything (pip-audit's --disable-pip: the locks are complete and hashed), and
prints one line per finding: lock, package, version, advisory, the versions that fix it.  Exit
code 0: nothing known; 1: findings; 2: the audit could not run (pip-audit asks PyPI's or OSV's
vulnerability service over the network).  After a finding: raise the floor in pyproject.toml
if needed, run requirements/lock.sh, run the tests.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LOCKS = ("app.lock", "worker.lock", "dev.lock")


def audit(lock: Path, service: str) -> tuple[list[tuple[str, str, str, str]], str]:
    """(package, version, advisory id, fixed in) of each finding; and an error if it did not run,
    or could not look a package up (pip-audit calls that a skip; here it is a failure)."""
    proc = subprocess.run([sys.executable, "-m", "pip_audit", "--disable-pip", "--require-hashes",
                           "--requirement", str(lock), "--vulnerability-service", service,
                           "--format", "json", "--progress-spinner", "off"],
                          capture_output=True, text=True)
    try:
        report = json.loads(proc.stdout)
    except ValueError:
        return [], (proc.stderr.strip() or f"pip-audit exited with {proc.returncode}").splitlines()[-1]
    skipped = [dep["skip_reason"] for dep in report["dependencies"] if dep.get("skip_reason")]
    if skipped:
        return [], f"{len(skipped)} of {len(report['dependencies'])} packages not audited, e.g. {skipped[0]}"
    findings = [(dep["name"], dep["version"], vuln["id"], ", ".join(vuln["fix_versions"]) or "no fix yet")
                for dep in report["dependencies"] for vuln in dep.get("vulns", [])]
    return findings, ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("locks", nargs="*", default=[str(REPO / "requirements" / name) for name in LOCKS])
    parser.add_argument("--service", default="pypi", choices=("pypi", "osv"))
    args = parser.parse_args()
    found, failed = 0, False
    for lock in map(Path, args.locks):
        findings, error = audit(lock, args.service)
        if error:
            print(f"{lock.name}: audit failed: {error}")
            failed = True
            continue
        print(f"{lock.name}: {len(findings)} known vulnerabilities")
        for package, version, advisory, fixed in findings:
            print(f"  {package} {version}: {advisory} (fixed in {fixed})")
        found += len(findings)
    return 2 if failed else (1 if found else 0)


if __name__ == "__main__":
    raise SystemExit(main())
