#!/usr/bin/python3
"""openapi_check.py DOC ANSWERS: checks real answers of aggr-sidecar against
its OpenAPI 3.1 document, so the document cannot drift from the code.

ANSWERS is a JSON array of {method, path, status, headers, body} as a client
saw them (header names lowercase).  Each answer must be one the document
describes for its route, method and status: its declared required headers
present and matching their schemas, its media type declared, a JSON body valid
against the declared schema (JSON Schema 2020-12, Debian's python3-jsonschema).
An unknown route must be a 404 with an Error body, and a known route asked
with a method it does not take a 405 with an Error body and an Allow header
naming the methods the document gives it (HEAD with GET), as the document's
description says.  Every status the document declares must have been seen,
except 500 (a bug or a misconfiguration).
Prints one line per problem; exits 1 if there is any.
"""
import json
import re
import sys

import jsonschema

NOT_EXERCISED = {"500"}


def main():
    doc = json.load(open(sys.argv[1]))
    answers = json.load(open(sys.argv[2]))
    jsonschema.Draft202012Validator.check_schema({"$defs": doc["components"]["schemas"]})

    def resolve(node):
        while isinstance(node, dict) and "$ref" in node:
            ref = node["$ref"]
            node = doc
            for part in ref.lstrip("#/").split("/"):
                node = node[part]
        return node

    def validate(schema, value):
        # the schema is checked with the whole document as its root, so that
        # its $refs (#/components/schemas/...) resolve
        root = dict(doc)
        root.update(schema)
        validator = jsonschema.Draft202012Validator(root)
        return [e.message for e in validator.iter_errors(value)]

    problems = []
    seen = set()
    error_schema = {"$ref": "#/components/schemas/Error"}
    for a in answers:
        a["status"] = int(a["status"])
        what = "%s %s -> %s" % (a["method"], a["path"], a["status"])
        method = "get" if a["method"] == "HEAD" else a["method"].lower()
        item = doc["paths"].get(a["path"])
        if item is None:
            if a["status"] != 404:
                problems.append("%s: an unknown route must be 404" % what)
            else:
                problems += ["%s: %s" % (what, m) for m in validate(error_schema, json.loads(a["body"]))]
            continue
        op = item.get(method)
        if op is None:
            allow = sorted(m.strip() for m in a["headers"].get("allow", "").split(","))
            want = sorted(sum([[m.upper()] + (["HEAD"] if m == "get" else []) for m in item], []))
            if a["status"] != 405:
                problems.append("%s: a method the route does not take must be 405" % what)
            elif allow != want:
                problems.append("%s: Allow %s, the document gives %s" % (what, allow, want))
            else:
                problems += ["%s: %s" % (what, m) for m in validate(error_schema, json.loads(a["body"]))]
            seen.add((a["path"], "other methods", "405"))
            continue
        response = op["responses"].get(str(a["status"]))
        if response is None:
            problems.append("%s: status not in the document" % what)
            continue
        seen.add((a["path"], method, str(a["status"])))
        response = resolve(response)
        for name, header in response.get("headers", {}).items():
            header = resolve(header)
            value = a["headers"].get(name.lower())
            if value is None:
                if header.get("required"):
                    problems.append("%s: header %s missing" % (what, name))
                continue
            pattern = header.get("schema", {}).get("pattern")
            if pattern and not re.search(pattern, value):
                problems.append("%s: header %s %r does not match %s" % (what, name, value, pattern))
        content = response.get("content", {})
        media = (a["headers"].get("content-type") or "").split(";")[0].strip()
        if content and media not in content:
            problems.append("%s: content type %r, the document has %s" % (what, media, sorted(content)))
            continue
        if media == "application/json" and a["method"] != "HEAD":
            try:
                body = json.loads(a["body"])
            except ValueError as e:
                problems.append("%s: body is not JSON: %s" % (what, e))
                continue
            problems += ["%s: %s" % (what, m) for m in validate(content[media]["schema"], body)]

    for path, item in doc["paths"].items():
        if (path, "other methods", "405") not in seen:
            problems.append("%s with a method it does not take: never asked" % path)
        for method, op in item.items():
            for status in op["responses"]:
                if status not in NOT_EXERCISED and (path, method, status) not in seen:
                    problems.append("%s %s -> %s: documented but never seen" % (method.upper(), path, status))

    for p in problems:
        print(p)
    print("openapi_check: %d answers, %d routes and statuses seen, %d problems"
          % (len(answers), len(seen), len(problems)))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
