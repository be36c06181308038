"""A real Arize Phoenix server on loopback, for the Phoenix trace source's tests.

Phoenix lives in its own virtualenv (``.venv-phoenix`` at the project root, created once and reused
across runs): its dependencies may conflict with Airflow's, so it never goes into the main venv. The
session-scoped :func:`phoenix_server` fixture starts ``phoenix serve`` on 127.0.0.1 (free HTTP and
gRPC ports, a temporary ``PHOENIX_WORKING_DIR`` so the database is a fresh SQLite file) with every
phone-home feature off, and stops it at the end.

Helpers talk to it like a user would: :func:`send_spans` exports OpenInference spans with the
OpenTelemetry SDK's OTLP/HTTP exporter (main venv) and waits until Phoenix has stored them;
:func:`annotate` / :func:`annotate_trace` upsert annotations through the REST API
(``POST /v1/span_annotations?sync=true``, ``POST /v1/trace_annotations?sync=true``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest
from lake_fixtures import free_port

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PHOENIX_VENV = Path(os.environ.get("OBSLAKE_PHOENIX_VENV", PROJECT_ROOT / ".venv-phoenix"))
PHOENIX_REQUIREMENT = "arize-phoenix[pg]==20.26.*"  # [pg]: asyncpg, for Phoenix on Postgres
_READY_MARK = PHOENIX_VENV / ".obslake-phoenix-ready"
START_TIMEOUT_S = 120.0

# Everything Phoenix could use to reach outside hosts, or to pick up a developer's own settings.
_PHOENIX_ENV = {
    "PHOENIX_TELEMETRY_ENABLED": "false",  # FullStory / Scarf pixels
    "PHOENIX_ALLOW_EXTERNAL_RESOURCES": "false",  # web fonts, WASM sandbox download, …
    "PHOENIX_DISABLE_AGENT_ASSISTANT": "true",  # the /chat assistant (LLM providers, web access)
    "PHOENIX_AGENTS_DISABLE_WEB_ACCESS": "true",
    "PHOENIX_AGENTS_DISABLE_GITHUB": "true",
    "PHOENIX_ENABLE_MCP_SERVER": "false",
    "PHOENIX_ENABLE_PROMETHEUS": "false",
    "DO_NOT_TRACK": "1",
    "HF_HUB_OFFLINE": "1",
    "NO_PROXY": "127.0.0.1,localhost",
}


def ensure_phoenix_venv() -> Path:
    """Create ``.venv-phoenix`` with Phoenix installed, unless a previous run already did.

    Returns:
        The path of the ``phoenix`` executable.

    Note:
        Concurrent test processes (xdist) serialise on a lock file; the venv is marked ready only
        after a complete install, so an interrupted install is redone on the next run.
    """
    phoenix = PHOENIX_VENV / "bin" / "phoenix"
    if _READY_MARK.is_file() and _READY_MARK.read_text().strip() == PHOENIX_REQUIREMENT and phoenix.exists():
        return phoenix
    PHOENIX_VENV.parent.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha1(str(PHOENIX_VENV).encode()).hexdigest()[:12]
    lock_path = Path(tempfile.gettempdir()) / f"obslake-venv-phoenix-{key}.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _READY_MARK.is_file() and _READY_MARK.read_text().strip() == PHOENIX_REQUIREMENT and phoenix.exists():
            return phoenix
        python3 = shutil.which("python3") or getattr(sys, "_base_executable", sys.executable)
        py = PHOENIX_VENV / "bin" / "python"
        steps = [
            [python3, "-m", "venv", str(PHOENIX_VENV)],
            [str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "uv"],
            [str(PHOENIX_VENV / "bin" / "uv"), "pip", "install", "--quiet", "--python", str(py), PHOENIX_REQUIREMENT],
        ]
        if py.exists():
            steps = steps[1:]
        for cmd in steps:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
            if proc.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
        _READY_MARK.write_text(PHOENIX_REQUIREMENT + "\n")
    return phoenix


@dataclasses.dataclass
class PhoenixServer:
    """A running ``phoenix serve``: SQLite under a temporary working directory, or a Postgres database."""

    base_url: str  # http://127.0.0.1:<port>
    grpc_port: int
    project: str  # the project the tests send spans to
    db_path: Path | None  # <working dir>/phoenix.db (None on Postgres)
    working_dir: Path
    log_path: Path
    pg_uri: str | None = None  # the Postgres database, when Phoenix runs on Postgres

    @property
    def db_uri(self) -> str:
        """A SQLAlchemy URI of the server's database (what :class:`PhoenixSource` takes; SQLite read only)."""
        return self.pg_uri or f"sqlite:///file:{self.db_path}?mode=ro&uri=true"


def _http(method: str, url: str, body: Any = None, timeout: float = 10.0) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            return resp.status, (json.loads(raw) if raw else None)
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw)
        except ValueError:
            return exc.code, raw.decode(errors="replace")


def _wait_until_up(base_url: str, proc: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"phoenix serve exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"{base_url}/healthz", timeout=1) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"phoenix serve did not answer in {START_TIMEOUT_S}s:\n{log_path.read_text()[-4000:]}")


@contextlib.contextmanager
def run_phoenix(pg_uri: str | None = None) -> Iterator[PhoenixServer]:
    """Start ``phoenix serve`` on 127.0.0.1 (free ports; SQLite in a temporary dir, or ``pg_uri``), stop it after."""
    phoenix = ensure_phoenix_venv()
    working_dir = Path(tempfile.mkdtemp(prefix="obslake-phoenix-"))
    log_path = working_dir / "phoenix-serve.log"
    port, grpc_port = free_port(), free_port()
    while grpc_port == port:
        grpc_port = free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PHOENIX_", "OTEL_")) and k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env.update(_PHOENIX_ENV)
    env.update({
        "PHOENIX_HOST": "127.0.0.1",
        "PHOENIX_PORT": str(port),
        "PHOENIX_GRPC_PORT": str(grpc_port),
        "PHOENIX_WORKING_DIR": str(working_dir),
        "PATH": f"{phoenix.parent}{os.pathsep}{env.get('PATH', '')}",
    })
    if pg_uri:
        env["PHOENIX_SQL_DATABASE_URL"] = pg_uri.replace("postgresql+psycopg2://", "postgresql://")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([str(phoenix), "serve"], env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, cwd=working_dir)
    base_url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(base_url, proc, log_path)
        yield PhoenixServer(base_url=base_url, grpc_port=grpc_port, project=f"obslake-{secrets.token_hex(4)}",
                            db_path=None if pg_uri else working_dir / "phoenix.db", working_dir=working_dir,
                            log_path=log_path, pg_uri=pg_uri)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=15)
        shutil.rmtree(working_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def phoenix_server() -> Iterator[PhoenixServer]:
    """A Phoenix server on 127.0.0.1 (free HTTP and gRPC ports, fresh SQLite DB), for the session.

    Yields:
        A :class:`PhoenixServer`: base URL, project name for the tests, SQLite DB path.
    """
    with run_phoenix() as server:
        yield server


@pytest.fixture(scope="session")
def phoenix_pg_server() -> Iterator[PhoenixServer]:
    """A Phoenix server on a new database of the test Postgres server (``OBSLAKE_TEST_PG``), dropped after."""
    import sqlalchemy as sa

    from lake_fixtures import PG_ADMIN_URI

    name = f"obslake_phoenix_{secrets.token_hex(6)}"
    admin = sa.create_engine(PG_ADMIN_URI, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        with run_phoenix(PG_ADMIN_URI.rsplit("/", 1)[0] + f"/{name}") as server:
            yield server
    finally:
        with admin.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


# -- helpers -----------------------------------------------------------------------------------------
def new_trace_id() -> str:
    return secrets.token_hex(16)


def new_span_id() -> str:
    return secrets.token_hex(8)


def _ns(t: dt.datetime) -> int:
    return int(t.timestamp() * 1_000_000) * 1_000


def send_spans(base_url: str, project: str, spans_spec: list[dict[str, Any]], *, wait_s: float = 30.0) -> list[dict]:
    """Export spans to Phoenix over OTLP/HTTP and wait until it has stored every one of them.

    Each spec is a dict: ``name``, ``trace_id`` (hex, 32), ``start``/``end`` (aware datetimes), and
    optionally ``span_id`` (hex, 16; generated if missing), ``parent_id``, ``kind`` (OpenInference
    span kind: ``LLM``, ``CHAIN``, …; default CHAIN), ``input``, ``output``, ``model``,
    ``prompt_tokens``, ``completion_tokens``, ``status`` (``OK``/``ERROR``/``UNSET``),
    ``status_message``, ``events`` (list of ``{"name", "time", "attributes"}``), ``attributes``
    (extra OTel attributes).

    Returns:
        The specs, each with its ``span_id`` filled in.
    """
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import Event, ReadableSpan
    from opentelemetry.sdk.trace.export import SpanExportResult
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.trace import SpanContext, SpanKind, TraceFlags
    from opentelemetry.trace.status import Status, StatusCode

    resource = Resource.create({"openinference.project.name": project, "service.name": "obslake-tests"})
    scope = InstrumentationScope("obslake.tests.phoenix")
    out, readable = [], []
    for spec in spans_spec:
        spec = {**spec, "span_id": spec.get("span_id") or new_span_id()}
        out.append(spec)
        kind = spec.get("kind", "CHAIN")
        attrs: dict[str, Any] = {"openinference.span.kind": kind}
        if "input" in spec:
            attrs.update({"input.value": spec["input"], "input.mime_type": "text/plain"})
        if "output" in spec:
            attrs.update({"output.value": spec["output"], "output.mime_type": "text/plain"})
        if "model" in spec:
            attrs["llm.model_name"] = spec["model"]
        prompt, completion = spec.get("prompt_tokens"), spec.get("completion_tokens")
        if prompt is not None:
            attrs["llm.token_count.prompt"] = prompt
        if completion is not None:
            attrs["llm.token_count.completion"] = completion
        if prompt is not None or completion is not None:
            attrs["llm.token_count.total"] = (prompt or 0) + (completion or 0)
        attrs.update(spec.get("attributes", {}))
        ctx = SpanContext(int(spec["trace_id"], 16), int(spec["span_id"], 16), is_remote=False,
                          trace_flags=TraceFlags(TraceFlags.SAMPLED))
        parent = (SpanContext(int(spec["trace_id"], 16), int(spec["parent_id"], 16), is_remote=False,
                              trace_flags=TraceFlags(TraceFlags.SAMPLED)) if spec.get("parent_id") else None)
        status = spec.get("status", "OK")
        events = [Event(e["name"], attributes=e.get("attributes", {}), timestamp=_ns(e["time"]))
                  for e in spec.get("events", [])]
        readable.append(ReadableSpan(
            name=spec["name"], context=ctx, parent=parent, resource=resource, attributes=attrs,
            events=events, kind=SpanKind.INTERNAL, instrumentation_scope=scope,
            status=Status(StatusCode[status], spec.get("status_message") if status == "ERROR" else None),
            start_time=_ns(spec["start"]), end_time=_ns(spec["end"]),
        ))
    exporter = OTLPSpanExporter(endpoint=f"{base_url}/v1/traces", timeout=10)
    try:
        result = exporter.export(readable)
    finally:
        exporter.shutdown()
    assert result is SpanExportResult.SUCCESS, f"OTLP export to {base_url} failed"
    _wait_for_spans(base_url, project, [s["span_id"] for s in out], wait_s)
    return out


def _wait_for_spans(base_url: str, project: str, span_ids: list[str], wait_s: float) -> None:
    """Poll ``GET /v1/projects/{project}/spans?span_id=…`` until Phoenix's bulk inserter stored them."""
    query = urllib.parse.urlencode([("limit", 1000)] + [("span_id", s) for s in span_ids])
    url = f"{base_url}/v1/projects/{urllib.parse.quote(project, safe='')}/spans?{query}"
    deadline = time.monotonic() + wait_s
    found: set[str] = set()
    while time.monotonic() < deadline:
        status, body = _http("GET", url)
        if status == 200:
            found = {s["context"]["span_id"] for s in body["data"]}
            if found >= set(span_ids):
                return
        time.sleep(0.1)
    raise AssertionError(f"Phoenix did not store spans {sorted(set(span_ids) - found)} within {wait_s}s")


def _annotation_body(name: str, label: str | None, score: float | None, explanation: str | None, kind: str,
                     identifier: str, metadata: dict | None) -> dict:
    result = {k: v for k, v in (("label", label), ("score", score), ("explanation", explanation)) if v is not None}
    body: dict[str, Any] = {"name": name, "annotator_kind": kind, "identifier": identifier,
                            "metadata": metadata or {}}
    if result:
        body["result"] = result
    return body


def annotate(base_url: str, span_id: str, name: str, label: str | None, score: float | None,
             explanation: str | None, kind: str, identifier: str = "", *, metadata: dict | None = None) -> str:
    """Upsert one span annotation (on name, span, identifier) via ``POST /v1/span_annotations?sync=true``.

    Returns:
        Phoenix's id of the annotation (a GraphQL global id).
    """
    body = {"data": [{"span_id": span_id,
                      **_annotation_body(name, label, score, explanation, kind, identifier, metadata)}]}
    status, resp = _http("POST", f"{base_url}/v1/span_annotations?sync=true", body)
    assert status == 200, f"POST /v1/span_annotations: {status} {resp}"
    return resp["data"][0]["id"]


def annotate_trace(base_url: str, trace_id: str, name: str, label: str | None, score: float | None,
                   explanation: str | None, kind: str, identifier: str = "", *,
                   metadata: dict | None = None) -> str:
    """Upsert one trace annotation via ``POST /v1/trace_annotations?sync=true``; returns its id."""
    body = {"data": [{"trace_id": trace_id,
                      **_annotation_body(name, label, score, explanation, kind, identifier, metadata)}]}
    status, resp = _http("POST", f"{base_url}/v1/trace_annotations?sync=true", body)
    assert status == 200, f"POST /v1/trace_annotations: {status} {resp}"
    return resp["data"][0]["id"]


def annotate_document(base_url: str, span_id: str, position: int, name: str, label: str | None,
                      score: float | None, explanation: str | None, kind: str) -> str:
    """Upsert one document annotation (a retrieved document of a RETRIEVER span) via
    ``POST /v1/document_annotations?sync=true``; returns its id."""
    body = {"data": [{"span_id": span_id, "document_position": position,
                      **_annotation_body(name, label, score, explanation, kind, "", None)}]}
    status, resp = _http("POST", f"{base_url}/v1/document_annotations?sync=true", body)
    assert status == 200, f"POST /v1/document_annotations: {status} {resp}"
    return resp["data"][0]["id"]


def delete_span_annotations(base_url: str, annotation_ids: list[str]) -> None:
    """Delete span annotations as Phoenix's UI does (GraphQL ``deleteSpanAnnotations``)."""
    query = ("mutation($ids: [ID!]!) { deleteSpanAnnotations(input: {annotationIds: $ids}) "
             "{ spanAnnotations { id } } }")
    status, resp = _http("POST", f"{base_url}/graphql", {"query": query, "variables": {"ids": annotation_ids}})
    assert status == 200 and not resp.get("errors"), f"deleteSpanAnnotations: {status} {resp}"


def delete_trace(base_url: str, trace_id: str) -> None:
    """Delete a trace with its spans and their annotations (``DELETE /v1/traces/{trace_id}``)."""
    status, resp = _http("DELETE", f"{base_url}/v1/traces/{trace_id}")
    assert status in (200, 204), f"DELETE /v1/traces/{trace_id}: {status} {resp}"
