"The offline docs site: pages render in headless Chromium with their content and no error tracebacks."
import functools, http.server, os, shutil, subprocess, sys, tempfile, threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT/"_docs"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")  # the last on GitHub runners

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

def dump_dom(url, wait_ms=0):
    "The page's DOM after Chromium has loaded and rendered it (and, with `wait_ms`, run its scripts that long)"
    if CHROMIUM is None:
        if os.environ.get("CI"): pytest.fail("chromium is not installed (.ci/run installs Debian's chromium)")
        pytest.skip("chromium is not installed")
    for attempt in range(3):   # a browser killed by a signal (it segfaulted once in CI on a busy machine) is started again
        with tempfile.TemporaryDirectory() as profile:
            res = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                                  f"--user-data-dir={profile}", *([f"--virtual-time-budget={wait_ms}"] if wait_ms else []),
                                  "--dump-dom", url],
                                 capture_output=True, text=True, timeout=120)
        if res.returncode >= 0: break
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout

@pytest.mark.parametrize("page,title,signature", [
    ("index.html", "sane_nb", "Citing SANE"),
    ("api/core.html", "Core", "seed_everything"),
])
def test_page_renders(site, page, title, signature):
    dom = dump_dom(f"{site}/{page}")
    assert f"<title>{title} – sane_nb</title>" in dom
    assert signature in dom
    assert "Traceback (most recent call last)" not in dom

def test_core_page_shows_rendered_signatures(site):
    dom = dump_dom(f"{site}/api/core.html")
    assert "atomic_write" in dom and "load_torch" in dom
    assert "weights_only=True" in dom     # prose and the rendered docstring of load_torch

def test_no_page_holds_an_error():
    if not DOCS.exists(): pytest.skip("docs not built")
    for page in DOCS.rglob("*.html"):
        assert "Traceback (most recent call last)" not in page.read_text(encoding="utf-8"), page


def test_math_renders_offline(site):
    "Formulas are typeset by the MathJax copied into the site, not left as raw TeX (no CDN is reachable offline)"
    dom = dump_dom(f"{site}/api/losses.html", wait_ms=15000)
    assert "MathJax" in dom and "$\\gamma" not in dom

def test_sectioned_navigation_and_contents(site):
    dom = dump_dom(f"{site}/api/dataset.html", wait_ms=3000)
    for sec in ("Start", "Stages", "Tutorials", "Benchmarks"): assert f"<h4>{sec}</h4>" in dom
    assert "<b>On this page</b>" in dom and 'class="here"' in dom

def test_links_resolve_offline():
    "Every relative link and resource of the offline site exists; nothing is loaded from another host"
    import re
    if not DOCS.exists(): pytest.skip("docs not built")
    dead, remote = [], []
    for page in DOCS.rglob("*.html"):
        html = page.read_text(encoding="utf-8")
        remote += [f"{page.name}: {u}" for u in re.findall(r'<(?:script|img|link)[^>]+(?:src|href)="(https?://[^"]+)"', html)]
        for u in re.findall(r'(?:href|src)="([^"#?]+)[^"]*"', html):
            if re.match(r"^(https?:|mailto:|data:|javascript:)", u): continue
            if not (page.parent/u).exists(): dead.append(f"{page.relative_to(DOCS)} -> {u}")
    assert not dead, dead[:20]
    assert not remote, remote[:20]

def test_subtitles_are_whole_and_unescaped():
    "A page's subtitle is its whole description, with YAML escapes decoded"
    if not DOCS.exists(): pytest.skip("docs not built")
    html = (DOCS/"bench"/"probe.html").read_text(encoding="utf-8")
    assert "R² and Kendall τ" in html and "over 3 seeds." in html and "\\xB2" not in html
