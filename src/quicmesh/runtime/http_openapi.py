"""The OpenAPI 3 document of the HTTP face, served at ``GET /v1/openapi.json``.

Written by hand next to the routes of :mod:`.http_api` (which a test compares it with), so that
clients in any language can generate a client or read what each route takes and answers.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ERROR_STATUSES", "openapi_document"]

ERROR_STATUSES: dict[str, tuple[int, str]] = {
    "BadRequest": (400, "Malformed request (bad timeout, bad key)."),
    "InvalidTopic": (400, "Bad or reserved topic, pattern or name."),
    "NotAdmitted": (401, "No valid bearer token (authority realm)."),
    "PermissionDenied": (403, "The token's permissions deny the action; names action and subject."),
    "NotFound": (404, "No such route."),
    "KeyNotFound": (404, "The map holds no such key."),
    "MethodNotAllowed": (405, "The route does not take this method."),
    "RequestTimeout": (408, "The request body did not arrive in time."),
    "MessageTooLarge": (413, "Body over http_api.max_body_bytes or pubsub.max_message_size."),
    "InvalidOperation": (422, "A map write the replicas would refuse (e.g. TimestampAhead)."),
    "LimitExceeded": (429, "A limit is reached (streams, bytes in flight, map keys); names limit and capacity."),
    "RemoteError": (502, "The procedure's handler failed; carries its code and retryable."),
    "NoProvider": (503, "No reachable node provides the procedure now (retry later)."),
    "Overloaded": (503, "Caller or provider at a limit of calls or handlers (retry later)."),
    "NodeClosed": (503, "The node is stopping."),
    "CallTimeout": (504, "No reply within the call's timeout."),
}
"""Every ``error`` name the face answers with, its status and meaning (subclasses of these
quicmesh errors answer with their own class name and the same status)."""


def _error_ref(*names: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in names:
        status, text = ERROR_STATUSES[name]
        entry = out.setdefault(str(status), {"description": "", "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
        entry["description"] = (entry["description"] + " " if entry["description"] else "") + f"{name}: {text}"
    return out


def _param(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description, "schema": {"type": "string"}}


_BYTES = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
_AUTH = ("NotAdmitted", "PermissionDenied")


def openapi_document(version: str) -> dict[str, Any]:
    """The OpenAPI 3.0 document of the ``/v1`` routes (``version``: quicmesh's)."""
    topic = _param("topic", "Topic (dot-separated segments).")
    pattern = _param("pattern", "Topic pattern: '*' one segment, '>' the rest (percent-encode '>' as %3E).")
    name = _param("name", "Procedure name.")
    kv = [_param("map", "Replicated map name."), _param("key", "Key.")]
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "quicmesh HTTP face",
            "version": version,
            "description": (
                "Publish, subscribe (Server-Sent Events or WebSocket), call procedures and read or write "
                "replicated maps through one quicmesh node. In an authority realm every request needs "
                "'Authorization: Bearer <token>' (quicmesh token bearer --token FILE) and the token's "
                "permissions; errors are JSON {error, message, ...} with the status codes listed."
            ),
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "qmb1"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error", "message"], "properties": {
                    "error": {"type": "string", "description": (
                        "The error's class name: " + ", ".join(sorted(ERROR_STATUSES)) + ", or a subclass of "
                        "one of them (e.g. ContainerFull, TimestampAhead); InternalError (500) for a bug.")},
                    "message": {"type": "string"},
                    "action": {"type": "string"}, "subject": {"type": "string"},
                    "limit": {"type": "string"}, "capacity": {"type": "integer"},
                    "code": {"type": "string"}, "retryable": {"type": "boolean"},
                }},
                "Message": {"type": "object", "properties": {
                    "topic": {"type": "string"}, "sender": {"type": "string"}, "seq": {"type": "integer"},
                    "payload_b64": {"type": "string", "format": "byte"},
                    "payload": {"type": "string", "nullable": True, "description": "UTF-8 text, null if not"},
                }},
            },
        },
        "security": [{"bearer": []}, {}],
        "paths": {
            "/v1/publish/{topic}": {"post": {
                "summary": "Publish the request body to a topic.",
                "parameters": [topic],
                "requestBody": {"required": False, "content": _BYTES},
                "responses": {
                    "200": {"description": "Published.", "content": {"application/json": {"schema": {
                        "type": "object", "properties": {"topic": {"type": "string"}, "bytes": {"type": "integer"}}}}}},
                    **_error_ref("InvalidTopic", *_AUTH, "MessageTooLarge", "LimitExceeded", "NodeClosed"),
                },
            }},
            "/v1/subscribe/{pattern}": {"get": {
                "summary": "Receive the messages of a pattern: Server-Sent Events, or a WebSocket on Upgrade.",
                "description": ("Events: 'subscribed' ({pattern}) first, then 'message' (a Message; SSE id = seq). "
                                "A consumer that falls behind is closed as a slow consumer. With ?group=NAME the "
                                "stream is a member of that work-queue group: each message goes to one member."),
                "parameters": [pattern, {"name": "group", "in": "query", "required": False,
                                         "schema": {"type": "string", "pattern": "^[A-Za-z0-9_.\\-]{1,64}$"}}],
                "responses": {
                    "200": {"description": "An SSE stream (text/event-stream) of Message events.",
                            "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                    "101": {"description": "A WebSocket of JSON text frames {event, ...Message}."},
                    **_error_ref("InvalidTopic", *_AUTH, "LimitExceeded", "NodeClosed"),
                },
            }},
            "/v1/call/{name}": {"post": {
                "summary": "Call a procedure with the request body; the response body is its reply.",
                "parameters": [name, {"name": "timeout", "in": "query", "required": False, "schema": {
                    "type": "number"}, "description": "Seconds (default rpc.default_timeout), clamped to "
                    "(0, gateway.max_client_call_timeout]."}],
                "requestBody": {"required": False, "content": _BYTES},
                "responses": {
                    "200": {"description": "The reply.", "content": _BYTES},
                    **_error_ref("BadRequest", "InvalidTopic", *_AUTH, "MessageTooLarge", "LimitExceeded",
                                 "RemoteError", "NoProvider", "Overloaded", "CallTimeout"),
                },
            }},
            "/v1/kv/{map}/{key}": {
                "get": {
                    "summary": "Read a key of a replicated map (needs log or subscribe permission on the map).",
                    "parameters": kv,
                    "responses": {
                        "200": {"description": "The value.", "content": _BYTES},
                        **_error_ref("BadRequest", *_AUTH, "KeyNotFound", "LimitExceeded"),
                    },
                },
                "put": {
                    "summary": "Write a key of a replicated map (needs log permission on the map).",
                    "parameters": kv,
                    "requestBody": {"required": True, "content": _BYTES},
                    "responses": {
                        "200": {"description": "Written.", "content": {"application/json": {"schema": {
                            "type": "object", "properties": {"map": {"type": "string"}, "key": {"type": "string"},
                                                             "bytes": {"type": "integer"}}}}}},
                        **_error_ref("BadRequest", *_AUTH, "MessageTooLarge", "InvalidOperation",
                                     "LimitExceeded"),
                    },
                },
            },
            "/v1/openapi.json": {"get": {
                "summary": "This document.", "security": [{}],
                "responses": {"200": {"description": "OpenAPI 3 JSON.",
                                      "content": {"application/json": {"schema": {"type": "object"}}}}},
            }},
        },
    }
