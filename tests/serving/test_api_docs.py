"""The API describes itself (issue 15, finding 6): optiserve's OpenAPI title and version, /docs that
loads nothing from another host, and an index at / that points to the docs, health and metrics."""

from __future__ import annotations

import subprocess
from html.parser import HTMLParser
from importlib.metadata import version
from pathlib import Path

import pytest
import requests

from server_harness import server_fixture
from test_report_page import CHROMIUM, CHROMIUM_FLAGS

server = server_fixture()
ASSET_TYPES = {".js": "javascript", ".css": "text/css", ".png": "image/png"}


class AssetLinks(HTMLParser):
    """The URLs a page loads: scripts, stylesheets and icons."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        url = found.get("src") if tag == "script" else found.get("href") if tag == "link" else None
        if url:
            self.urls.append(url)


def test_the_docs_page_loads_its_assets_from_this_server_only(server):
    page = requests.get(server.url + "/docs", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "://" not in page.text, "the page names another host"
    parser = AssetLinks()
    parser.feed(page.text)
    assert {Path(url).suffix for url in parser.urls} == set(ASSET_TYPES), parser.urls
    for url in parser.urls:
        assert url.startswith("/") and not url.startswith("//"), url
        asset = requests.get(server.url + url, timeout=10)
        assert asset.status_code == 200, url
        assert ASSET_TYPES[Path(url).suffix] in asset.headers["content-type"], (url, asset.headers["content-type"])
        assert asset.content, url


def test_headless_chromium_renders_the_docs_with_every_route(server, tmp_path: Path):
    if not CHROMIUM.exists():
        pytest.skip(f"headless Chromium not found at {CHROMIUM}: install Debian's `chromium` package (apt-get install chromium)")
    # Virtual time lets the page fetch /openapi.json and render before the DOM is dumped.
    command = [str(CHROMIUM), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path}", "--virtual-time-budget=20000", "--dump-dom"]
    dom = subprocess.run([*command, server.url + "/docs"], capture_output=True, text=True, timeout=120, check=True).stdout
    assert 'class="title">optiserve' in dom, dom[-2000:]
    for path in ("/predict", "/compare", "/models", "/models/{model_id}", "/health", "/metrics"):
        assert f'data-path="{path}"' in dom, path


def test_the_openapi_schema_names_optiserve_and_its_version(server):
    schema = requests.get(server.url + "/openapi.json", timeout=10).json()
    assert schema["info"]["title"] == "optiserve"
    assert schema["info"]["version"] == version("optiserve")
    assert "Authorization: Bearer" in schema["info"]["description"]
    # Management routes declare the key, so /docs offers "Authorize"; inference answers are documented.
    assert schema["paths"]["/models"]["post"]["security"] == [{"HTTPBearer": []}]
    assert "security" not in schema["paths"]["/models"]["get"]
    predict = schema["paths"]["/predict"]["post"]["responses"]
    assert predict["200"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/PredictResponse"}
    assert {"404", "422", "503", "504"} <= predict.keys()


def test_the_index_points_to_the_docs_health_and_metrics(server):
    index = requests.get(server.url + "/", timeout=10)
    assert index.status_code == 200
    body = index.json()
    assert body["service"] == "optiserve" and body["version"] == version("optiserve")
    assert {"/docs", "/openapi.json", "/health", "/ready", "/metrics", "/models"} <= body["links"].keys()
    for path in body["links"]:
        assert requests.get(server.url + path, timeout=10).status_code == 200, path
