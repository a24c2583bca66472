"""Schemathesis hooks for scripts/fuzz (loaded through SCHEMATHESIS_HOOKS).

They keep long-polls short, so a legitimate wait is not mistaken for a hang,
keep the fuzzer in its room, and count what happened to every request: the
totals `scripts/fuzz` prints come from the JSON file written at exit
(CHANCERY_FUZZ_STATS).
"""

import atexit
import json
import os
import sys
import threading
from urllib.parse import quote, unquote

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


def _rejoin(case, response):
    """Join the fuzzer's room again after a generated leave or forget took it out."""
    room = os.environ.get("CHANCERY_FUZZ_ROOM")
    if not room or unquote(str(case.path_parameters.get("roomId"))) != room or response.status_code != 200:
        return
    auth = response.request.headers.get("Authorization")
    if not auth or not case.operation.path.endswith(("/leave", "/forget")):
        return
    url = response.request.url.split("/_matrix/")[0] + "/_matrix/client/v3/join/" + quote(room, safe="")
    requests.post(url, json={}, headers={"Authorization": auth}, timeout=30)


@schemathesis.hook
def after_call(context, case, response):
    _rejoin(case, response)
    label = _label(case)
    status = response.status_code
    # The coverage phase also tries methods the operation does not have;
    # only an answer to the operation's own method says it is not routed.
    own_method = response.request.method == case.operation.method.upper()
    unrecognized = False
    if status in (404, 405) and own_method:
        try:
            unrecognized = response.json().get("errcode") == "M_UNRECOGNIZED"
        except (ValueError, AttributeError):
            pass
    with _lock:
        _stats["requests"] += 1
        _stats["statuses"][str(status)] = _stats["statuses"].get(str(status), 0) + 1
        per_op = _stats["operations"].setdefault(label, {"requests": 0, "own_method": {}})
        per_op["requests"] += 1
        if own_method:
            key = "M_UNRECOGNIZED" if unrecognized else str(status)
            per_op["own_method"][key] = per_op["own_method"].get(key, 0) + 1
        if status >= 500:
            _stats["server_errors"].append({"operation": label, "status": status, "body": response.text[:300]})


@schemathesis.hook
def after_network_error(context, case, request):
    error = sys.exc_info()[1]
    kind = "timeouts" if isinstance(error, requests.Timeout) else "connection_errors"
    with _lock:
        _stats["requests"] += 1
        _stats["operations"].setdefault(_label(case), {"requests": 0, "own_method": {}})["requests"] += 1
        _stats[kind].append({"operation": _label(case), "error": type(error).__name__})


@atexit.register
def _write_stats():
    path = os.environ.get("CHANCERY_FUZZ_STATS")
    if path:
        with _lock, open(path, "w", encoding="utf-8") as f:
            json.dump(_stats, f, indent=1)
