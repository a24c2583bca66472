#!/usr/bin/env python3
"""Bundle the Matrix spec's client-server OpenAPI files into one document.

The spec splits the client-server API into one OpenAPI file per feature, each
with its own base path (`/_matrix/client/v3`, `/_matrix/client/v1`, ...) and
with `$ref`s into `definitions/` and the event schemas. Schemathesis wants one
document, so this inlines every `$ref` (a recursive one becomes `{}`, "any
value"), prefixes each path with its file's base path and writes the result as
JSON.

usage: fuzz-bundle.py SPEC_API_DIR OUT.json
"""

import json
import os
import sys

import yaml

_files = {}


def load(path):
    if path not in _files:
        with open(path, encoding="utf-8") as f:
            _files[path] = yaml.safe_load(f)
    return _files[path]


def pointer(doc, fragment):
    for part in fragment.lstrip("/").split("/") if fragment.strip("/") else []:
        part = part.replace("~1", "/").replace("~0", "~")
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    return doc


def inline(node, path, seen=()):
    """Return `node` (read from file `path`) with every `$ref` replaced by its target."""
    if isinstance(node, list):
        return [inline(item, path, seen) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str):
        target_file, _, fragment = ref.partition("#")
        target_path = os.path.normpath(os.path.join(os.path.dirname(path), target_file)) if target_file else path
        key = (target_path, fragment)
        if key in seen:
            return {}
        target = inline(pointer(load(target_path), fragment), target_path, seen + (key,))
        siblings = {k: inline(v, path, seen) for k, v in node.items() if k != "$ref"}
        if isinstance(target, dict):
            return {**target, **siblings}
        return target
    return {k: inline(v, path, seen) for k, v in node.items()}


def merge(operation, other):
    """Let `operation` also take `other`'s request bodies and parameters."""
    for media, body in other.get("requestBody", {}).get("content", {}).items():
        content = operation.setdefault("requestBody", {}).setdefault("content", {})
        if media in content:
            content[media] = {"schema": {"anyOf": [content[media].get("schema", {}), body.get("schema", {})]}}
        else:
            content[media] = body
    known = {(p["in"], p["name"]) for p in operation.get("parameters", [])}
    for parameter in other.get("parameters", []):
        if (parameter["in"], parameter["name"]) not in known:
            operation.setdefault("parameters", []).append({**parameter, "required": False} if parameter["in"] != "path" else parameter)


def base_path(doc):
    for server in doc.get("servers", []):
        default = server.get("variables", {}).get("basePath", {}).get("default")
        if default is not None:
            return default
    return ""


def main(api_dir, out):
    paths = {}
    for name in sorted(os.listdir(api_dir)):
        if not name.endswith(".yaml"):
            continue
        path = os.path.join(api_dir, name)
        doc = load(path)
        prefix = base_path(doc)
        for route, item in inline(doc.get("paths", {}), path).items():
            # The spec writes a second operation on a path with a trailing
            # space (`/invite ` for third-party invites); merged here as
            # one operation accepting either request body.
            merged = paths.setdefault(prefix + route.rstrip(), {})
            for method, operation in item.items():
                if method in merged:
                    merge(merged[method], operation)
                else:
                    merged[method] = operation
    bundle = {
        "openapi": "3.1.0",
        "info": {"title": "Matrix client-server API (bundled)", "version": "1.19"},
        "paths": paths,
        "components": {
            "securitySchemes": {
                name: inline(scheme, os.path.join(api_dir, "definitions/security.yaml"))
                for name, scheme in load(os.path.join(api_dir, "definitions/security.yaml")).items()
            }
        },
    }
    with open(out, "w", encoding="utf-8") as f:
        json.dump(bundle, f)
    operations = sum(1 for item in paths.values() for method in item if method in ("get", "put", "post", "delete"))
    print(f"bundled {len(paths)} paths, {operations} operations into {out}", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
