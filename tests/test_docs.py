"The offline docs site: pages render in headless Chromium with their content and no error tracebacks."
import functools, http.server, os, shutil, subprocess, sys, tempfile, threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT/"_docs"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

@pytest.fixture(scope="module")
def site():
    "Serve `_docs/` (built first if missing) on 127.0.0.1; yields the base URL"
    if not (DOCS/"index.html").exists():
        subprocess.run([sys.executable, str(ROOT/"tools"/"build_docs.py")], cwd=ROOT, check=True)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(DOCS))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()

def dump_dom(url):
    "The page's DOM after Chromium has loaded and rendered it"
    if CHROMIUM is None:
        if os.environ.get("CI"): pytest.fail("chromium is not installed (.ci/run installs Debian's chromium)")
        pytest.skip("chromium is not installed")
    with tempfile.TemporaryDirectory() as profile:
        res = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                              "--disable-background-networking", "--disable-component-update", "--disable-sync",
                              f"--user-data-dir={profile}", "--dump-dom", url],
                             capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout

@pytest.mark.parametrize("page,title,signature", [
    ("index.html", "sane_nb", "Citing SANE"),
    ("core.html", "Core", "seed_everything"),
])
def test_page_renders(site, page, title, signature):
    dom = dump_dom(f"{site}/{page}")
    assert f"<title>{title} – sane_nb</title>" in dom
    assert signature in dom
    assert "Traceback (most recent call last)" not in dom

def test_core_page_shows_rendered_signatures(site):
    dom = dump_dom(f"{site}/core.html")
    assert "atomic_write" in dom and "load_torch" in dom
    assert "weights_only=True" in dom     # prose and the rendered docstring of load_torch

def test_no_page_holds_an_error():
    if not DOCS.exists(): pytest.skip("docs not built")
    for page in DOCS.rglob("*.html"):
        assert "Traceback (most recent call last)" not in page.read_text(encoding="utf-8"), page
