"""The KFP API server and UI (backend/src/apiserver, frontend/server) at 2.15.0 and 2.17.0, as
uft's client code meets them: the healthz answers of both, the multi-user upload rules, and
bearer tokens. A local HTTP server answers like each (the only stand-in: no cluster here); the
client is the real kfp.Client."""

from __future__ import annotations

import base64
import datetime as dt
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from tests.kfp_fake import HOST, FakeClient
from uft.errors import UftError

#: backend/src/apiserver/main.go: 2.15.0 writes this JSON inline in the /apis/v1beta1/healthz
#: handler; 2.17.0 marshals healthzResponse (newHealthzResponse) with the same names.
API_SERVER = {"commit_sha": "abc", "tag_name": "2.17.0", "multi_user": True}
#: frontend/server/handlers/healthz.ts, getHealthzHandler (2.15.0 and 2.17.0): the UI fetches the
#: API server's healthz and answers with it renamed (apiServerTagName ← tag_name, apiServerMultiUser
#: and multi_user ← multi_user), next to its own build fields; app.ts serves it on the same path.
UI = {"apiServerCommitHash": "abc", "apiServerTagName": "2.17.0", "apiServerMultiUser": True, "multi_user": True,
      "apiServerReady": True, "buildDate": "x", "frontendCommitHash": "y", "frontendTagName": "2.17.0"}


def _serve(body: dict):
    seen = []

    class Api(BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append((self.path, self.headers.get("Authorization")))
            data = json.dumps(body).encode()
            self.send_response(200 if self.path == "/apis/v1beta1/healthz" else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *a):
            pass

    server = HTTPServer(("127.0.0.1", 0), Api)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, seen


@pytest.mark.parametrize("answer", [API_SERVER, UI], ids=["ml-pipeline", "ml-pipeline-ui"])
def test_version_and_multi_user_through_either_endpoint(answer, monkeypatch):
    """docs/deploy.md port-forwards ml-pipeline-ui; the API server itself answers differently.
    Both must give the release and the multi-user flag."""
    from uft.orchestrate.submit import backend_info, check_backend, kfp_client

    monkeypatch.delenv("KFP_TOKEN", raising=False)
    monkeypatch.delenv("UFT_KFP_VERSION", raising=False)
    server, seen = _serve(answer)
    try:
        client = kfp_client(f"http://127.0.0.1:{server.server_port}")
        assert backend_info(client) == ("2.17.0", True)
        assert check_backend(client, "here") == "2.17.0"  # no --kfp-version needed
        assert seen[-1][0] == "/apis/v1beta1/healthz"
    finally:
        server.shutdown()


def test_an_unknown_tag_or_a_ui_without_its_api_server_reports_no_version():
    """main.go: TAG_NAME defaults to "unknown"; healthz.ts: apiServerReady=false and no API fields
    when the UI cannot reach the API server. Neither is a version: the stated one is needed."""
    from uft.orchestrate.backend import healthz_fields

    assert healthz_fields({"tag_name": "unknown", "multi_user": False}) == (None, False)
    assert healthz_fields({"apiServerReady": False, "frontendTagName": "2.17.0"}) == (None, None)


def test_a_ui_whose_api_server_went_down_is_not_read_as_a_version(monkeypatch):
    """frontend/server/handlers/healthz.ts, getHealthzHandler (2.15.0 and 2.17.0): one
    ``healthzStats`` object lives as long as the UI; when the fetch of the API server's healthz
    fails, the catch branch sets only ``healthzStats.apiServerReady = false`` and the last
    ``apiServerTagName``/``apiServerMultiUser`` stay in the answer. uft reads ``apiServerReady``:
    such an answer gives no version, and submit stops with one line naming the API server."""
    from uft.orchestrate.backend import healthz_fields
    from uft.orchestrate.submit import check_backend, kfp_client

    stale = {**UI, "apiServerReady": False}  # what the UI answers after its API server went away
    assert healthz_fields(stale) == (None, None)
    assert healthz_fields(UI) == ("2.17.0", True)
    monkeypatch.delenv("KFP_TOKEN", raising=False)
    monkeypatch.setenv("UFT_KFP_VERSION", "2.17.0")  # not even a stated version gets past a dead API server
    server, _ = _serve(stale)
    try:
        with pytest.raises(UftError, match=r"cannot reach its API server \(healthz apiServerReady: false\)"):
            check_backend(kfp_client(f"http://127.0.0.1:{server.server_port}"), "here")
    finally:
        server.shutdown()


def test_multi_user_uploads_go_into_the_profile_namespace():
    """backend/src/apiserver/server/pipeline_upload_server.go, UploadPipeline: the pipeline's
    namespace is the ``namespace`` query (ReplaceNamespace keeps it in multi-user mode, blanks it
    otherwise); validation/namespace.go, ValidateNamespaceRequired refuses "" when
    REQUIRE_NAMESPACE_FOR_PIPELINES is set; pipeline_server.go, canAccessPipeline (2.17.0)
    authorises writes to shared pipelines against KFP's own namespace, where a profile's editor
    has no rights. Versions inherit the pipeline's namespace (canUploadVersionedPipeline).
    Multi-user (healthz ``multi_user``): pipeline and lookups in the run's namespace."""
    from uft.orchestrate.submit import submit

    c = FakeClient(version="2.17.0", multi_user=True, require_namespace=True)
    submit(HOST, {}, namespace="uft", client=c, allow_unpinned=True)
    assert c.pipeline_namespaces == {"uft": "uft"} and len(c.runs) == 1
    submit(HOST, {"seed": "1"}, namespace="uft", client=c, allow_unpinned=True)  # found again in its namespace
    assert len(c.pipelines) == 1 and len(c.runs) == 2
    # standalone KFP: a shared pipeline (the server would blank the namespace anyway)
    s = FakeClient(version="2.15.0", multi_user=False)
    submit(HOST, {}, namespace="uft", client=s, allow_unpinned=True)
    assert s.pipeline_namespaces == {"uft": None}


def _jwt(exp: dt.datetime) -> str:
    def part(d: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).decode().rstrip("=")

    return f"{part({'alg': 'RS256'})}.{part({'aud': ['pipelines.kubeflow.org'], 'exp': int(exp.timestamp())})}.c2ln"


def test_an_expired_kfp_token_is_refused_before_any_call(monkeypatch):
    """backend/src/apiserver/auth (TokenReview authenticator): an expired ServiceAccount token is a
    401 on every call. `kubectl create token` defaults to one hour; uft refuses an expired
    $KFP_TOKEN up front with the command that renews it, and never prints the token."""
    from uft.orchestrate.submit import kfp_client, token_expiry

    now = dt.datetime.now(dt.timezone.utc)
    old = _jwt(now - dt.timedelta(minutes=5))
    monkeypatch.setenv("KFP_TOKEN", old)
    with pytest.raises(UftError, match=r"KFP_TOKEN expired at .*create token uft-ci") as e:
        kfp_client("http://127.0.0.1:9")
    assert old not in str(e.value)
    fresh = _jwt(now + dt.timedelta(days=30))
    assert token_expiry(fresh) is not None and token_expiry("not-a-jwt") is None
    monkeypatch.setenv("KFP_TOKEN", fresh)
    kfp_client("http://127.0.0.1:9")  # accepted (no call is made by the constructor's check)


def test_a_token_in_its_last_days_is_announced():
    """The workflow runs every 30 minutes on a stored token: its last week is announced."""
    from uft.orchestrate.submit import token_warning

    now = dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc)
    assert token_warning(_jwt(now + dt.timedelta(days=30)), now) is None
    line = token_warning(_jwt(now + dt.timedelta(days=3)), now)
    assert line and "expires at 2026-12-04" in line and "create token uft-ci" in line
    assert token_warning(None, now) is None and token_warning("opaque", now) is None
