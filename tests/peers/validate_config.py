#!/usr/bin/env python3
"""Validates YAML files against a JSON Schema with the `jsonschema` package (an independent
validator, Draft 2020-12), as an editor's YAML language server would.

    validate_config.py SCHEMA.json FILE.yaml...

Prints one line per problem and exits 1 if any file is invalid.
"""
import json
import sys

import jsonschema
import yaml


def as_json(value):
    """YAML as a JSON document: mapping keys are strings (`2:` under `ports` is "2")."""
    if isinstance(value, dict):
        return {str(k): as_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [as_json(v) for v in value]
    return value


def main():
    schema = json.load(open(sys.argv[1]))
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    bad = 0
    for path in sys.argv[2:]:
        document = as_json(yaml.safe_load(open(path)))
        for error in sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path)):
            where = ".".join(str(p) for p in error.absolute_path) or "(top)"
            print(f"{path}: {where}: {error.message}")
            bad += 1
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
