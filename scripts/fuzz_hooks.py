"""Schemathesis hooks for scripts/fuzz (loaded through SCHEMATHESIS_HOOKS).

They keep long-polls short, so a legitimate wait is not mistaken for a hang,
and count what happened to every request: the totals `scripts/fuzz` prints
come from the JSON file written at exit (CHANCERY_FUZZ_STATS).
"""

import atexit
import json
import os
import sys
import threading

import requests
import schemathesis

# /sync and /events wait up to `timeout` ms for news; the server allows
# minutes. Cut generated values above this, keep negative and odd ones.
MAX_LONG_POLL_MS = 1000
LONG_POLLS = ("/sync", "/events")

_lock = threading.Lock()
_stats = {
    "requests": 0,
    "statuses": {},
    "server_errors": [],
    "timeouts": [],
    "connection_errors": [],
    "unrecognized": {},
    "operations": {},
}


def _label(case):
    return f"{case.operation.method.upper()} {case.operation.path}"


@schemathesis.hook
def before_call(context, case, kwargs):
    if case.operation.path.endswith(LONG_POLLS) and isinstance(case.query, dict):
        timeout = case.query.get("timeout")
        if isinstance(timeout, int) and not isinstance(timeout, bool) and timeout > MAX_LONG_POLL_MS:
            case.query["timeout"] = MAX_LONG_POLL_MS


@schemathesis.hook
def after_call(context, case, response):
    label = _label(case)
    status = response.status_code
    unrecognized = False
    # The coverage phase also tries methods the operation does not have;
    # only an answer to the operation's own method says it is not routed.
    if status in (404, 405) and response.request.method == case.operation.method.upper():
        try:
            unrecognized = response.json().get("errcode") == "M_UNRECOGNIZED"
        except (ValueError, AttributeError):
            pass
    with _lock:
        _stats["requests"] += 1
        _stats["statuses"][str(status)] = _stats["statuses"].get(str(status), 0) + 1
        per_op = _stats["operations"].setdefault(label, {"requests": 0, "unrecognized": 0})
        per_op["requests"] += 1
        if unrecognized:
            per_op["unrecognized"] += 1
        if status >= 500:
            _stats["server_errors"].append({"operation": label, "status": status, "body": response.text[:300]})


@schemathesis.hook
def after_network_error(context, case, request):
    error = sys.exc_info()[1]
    kind = "timeouts" if isinstance(error, requests.Timeout) else "connection_errors"
    with _lock:
        _stats["requests"] += 1
        _stats["operations"].setdefault(_label(case), {"requests": 0, "unrecognized": 0})["requests"] += 1
        _stats[kind].append({"operation": _label(case), "error": type(error).__name__})


@atexit.register
def _write_stats():
    path = os.environ.get("CHANCERY_FUZZ_STATS")
    if path:
        with _lock, open(path, "w", encoding="utf-8") as f:
            json.dump(_stats, f, indent=1)
