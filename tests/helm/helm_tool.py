"""Lint or render the chart with Helm's Go SDK (helm-python-sdk), printing JSON for the Rust tests.

    python3 helm_tool.py lint   CHART_DIR VALUES_JSON
    python3 helm_tool.py render CHART_DIR VALUES_JSON

render prints {"path": "manifest text", ...}, CRDs from crds/ included (as `helm install` applies
them). Exits non-zero with Helm's message when Helm refuses the chart or the values.
"""
import json
import pathlib
import sys

import helm_python as helm


def main() -> int:
    command, chart_dir, values_json = sys.argv[1:4]
    values = json.loads(values_json) or None
    if command == "lint":
        print(json.dumps(helm.lint(chart_dir, values, strict=True, namespace="distillery-system")))
        return 0
    if command == "render":
        chart = helm.Chart.load(chart_dir)
        chart.validate_schema(values)
        out = chart.render(values, name="distillery", namespace="distillery-system", is_install=True)
        for crd in sorted(pathlib.Path(chart_dir, "crds").glob("*.yaml")):
            out[f"crds/{crd.name}"] = crd.read_text()
        print(json.dumps(out))
        return 0
    print(f"unknown command {command}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    try:
        sys.exit(main())
    except helm.HelmError as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
