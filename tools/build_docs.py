"""Offline documentation build: `_docs/*.html` and `README.md` from the notebooks, without Quarto.

Quarto (nbdev's docs engine) cannot be installed on machines without GitHub access, so this script does what
`nbdev_docs` + `nbdev_readme` do, with nbdev's own notebook processor and nbconvert:

1. `nbdev.serve.proc_nbs` writes processed notebooks to `_proc/` (front matter, `show_doc` rendered, `#| hide` dropped);
2. each one becomes `_docs/<output-file>.html` (nbconvert's HTML exporter) with a navigation bar of all pages;
3. the processed `index.ipynb` becomes `README.md` (nbconvert's Markdown exporter).

It refuses to publish a page that holds an error from a notebook cell. Where Quarto exists, `nbdev_docs` builds the
full site from the same notebooks and `_quarto.yml`.

    python tools/build_docs.py            # -> _docs/, README.md
"""
import json, re, shutil, sys
from pathlib import Path

import nbformat
from nbconvert import HTMLExporter, MarkdownExporter
from nbdev.config import get_config
from nbdev.serve import proc_nbs

_NAV_CSS = """<style>
.sane-nav{position:fixed;top:0;left:0;bottom:0;width:15em;overflow-y:auto;background:#2c3e50;padding:1em .8em;font-family:sans-serif;font-size:.9em;z-index:10}
.sane-nav h4{color:#95a5a6;text-transform:uppercase;font-size:.75em;letter-spacing:.08em;margin:1.2em 0 .3em}
.sane-nav a{display:block;color:#ecf0f1;text-decoration:none;padding:.15em 0}.sane-nav a.here{font-weight:bold;text-decoration:underline}
.sane-toc{position:fixed;top:1em;right:1em;width:13em;max-height:90vh;overflow-y:auto;font-family:sans-serif;font-size:.8em;border-left:2px solid #ddd;padding-left:.7em}
.sane-toc a{display:block;color:#2c3e50;text-decoration:none;padding:.1em 0}.sane-toc a.h3{padding-left:1em}
body{padding:0 15em 0 16em !important;margin:0 !important}
body .jp-Notebook{max-width:1000px;margin:0 auto !important}
@media (max-width:1300px){.sane-toc{display:none} body{padding-right:1em !important}}
.sane-desc{font-size:1.15em;color:#555;margin-bottom:1.5em}
</style>"""

# the page's contents, built in the browser from its own h2/h3 headings (no network needed)
_TOC_JS = """<script>
document.addEventListener("DOMContentLoaded", function(){
  var hs = document.querySelectorAll(".jp-Notebook h2[id], .jp-Notebook h3[id]"), box = document.getElementById("sane-toc");
  if (!box || hs.length < 2) return;
  box.innerHTML = "<b>On this page</b>";
  hs.forEach(function(h){ var a = document.createElement("a"); a.href = "#" + h.id; a.className = h.tagName.toLowerCase();
    a.textContent = h.textContent.replace(/\u00b6$/, ""); box.appendChild(a); });
});
</script>"""

HOSTED = "https://sane-nb.github.io/sane_nb/"          # where nbdev_docs publishes the site
SOURCE = "https://github.com/sane-nb/sane_nb/blob/main/"  # where the source links of show_doc point

SECTIONS = {"explanations": "Explanations", "api": "Stages", "tutorials": "Tutorials", "bench": "Benchmarks"}  # folders of nbs/

def section(out:str)->str|None:
    "The navigation section of a page: the index starts, then one section per folder of nbs/"
    p = Path(out)
    if p.stem == "index" and len(p.parts) == 1: return "Start"
    if "old_names" in p.parts: return None              # deprecation aliases: built, not listed
    return SECTIONS.get(p.parts[0])

def offline_links(html:str, depth:str)->str:
    "Links that resolve in the offline build: hosted pages become relative, source links point to the copied sources"
    html = html.replace(f'href="{HOSTED}', f'href="{depth}')
    html = re.sub(rf'href="{re.escape(SOURCE)}([^"#]+)(#[^"]*)?"', lambda m: f'href="{depth}source/{m.group(1)}"', html)
    html = re.sub(r'<script[^>]*src="https://cdnjs\.cloudflare\.com/ajax/libs/require\.js/[^"]*"[^>]*></script>', "", html)  # widgets only
    # MathJax 2.7 as jupyter-server-mathjax ships it (its combined configuration for TeX is TeX-AMS-MML_HTMLorMML)
    return re.sub(r'src="https://cdnjs\.cloudflare\.com/ajax/libs/mathjax/[^"]*"',
                  f'src="{depth}mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full,Safe"', html)

def copy_assets(docs:Path, root:Path):
    "MathJax (from the installed jupyter-server-mathjax package) and the package sources, so the site works offline"
    import jupyter_server_mathjax
    mj = Path(jupyter_server_mathjax.__file__).parent/"static"
    shutil.copytree(mj, docs/"mathjax", ignore=shutil.ignore_patterns("png", "*.png"))
    for f in (root/"sane_nb").rglob("*.py"):
        dest = docs/"source"/f.relative_to(root)
        dest.parent.mkdir(parents=True, exist_ok=True); shutil.copy(f, dest)

def front_matter(nb):
    "title, description, output file from the raw front-matter cell nbdev's processor writes"
    fm = {}
    if nb.cells and nb.cells[0].cell_type == "raw":
        import yaml    # the front matter is YAML: quoted, escaped (\xB2, \u03C4) and folded over lines
        meta = yaml.safe_load(nb.cells[0].source.strip().strip("-")) or {}
        fm = {k: " ".join(str(meta[k]).split()) for k in ("title", "description", "output-file") if k in meta}
        nb.cells = nb.cells[1:]
    return fm

def cell_errors(nb):
    "Descriptions of every error output in a notebook (tracebacks must never reach a page)"
    errs = []
    for i, c in enumerate(nb.cells):
        for o in c.get("outputs", []):
            if o.get("output_type") == "error": errs.append(f"cell {i}: {o.get('ename')}: {o.get('evalue')}")
            elif o.get("output_type") == "stream" and "Traceback (most recent call last)" in o.get("text", ""):
                errs.append(f"cell {i}: traceback printed to {o.get('name')}")
    return errs

def page_order(src):
    "index first, then the notebooks of each folder in their numbered order"
    return (src.stem != "index", len(src.parts), str(src))

def quarto_cells(nb):
    "Apply the Quarto cell options nbdev leaves in processed notebooks: `echo: false`, `output: asis`"
    cells = []
    for c in nb.cells:
        if c.cell_type != "code": cells.append(c); continue
        lines = c.source.splitlines()
        opts = {l[3:].split(":")[0].strip(): l.split(":", 1)[-1].strip() for l in lines if l.startswith("#| ")}
        c.source = "\n".join(l for l in lines if not l.startswith("#|")).strip()
        if opts.get("output") == "asis":    # show_doc: its markdown output becomes the page content
            md = "".join("".join(o.get("data", {}).get("text/markdown", "")) for o in c.get("outputs", []))
            cells.append(nbformat.v4.new_markdown_cell(re.sub(r"\{target=[^}]*\}", "", md)))
        elif opts.get("echo") == "false": c.metadata["jupyter"] = {"source_hidden": True}; cells.append(c)
        elif c.source or c.get("outputs"): cells.append(c)
    nb.cells = cells

def build(root=None):
    cfg = get_config()
    root = Path(root or cfg.config_path)
    proc = Path(proc_nbs(n_workers=0, force=True))
    docs = root/cfg.doc_path.name
    if docs.exists(): shutil.rmtree(docs)
    docs.mkdir(parents=True)
    pages, problems = [], []
    for src in sorted(proc.rglob("*.ipynb")):
        nb = nbformat.read(src, as_version=4)
        nb.metadata["language_info"] = {"name": "python"}    # so code blocks are highlighted as Python
        problems += [f"{src.relative_to(proc)}: {e}" for e in cell_errors(nb)]
        fm = front_matter(nb)
        quarto_cells(nb)
        out = src.relative_to(proc).parent/fm.get("output-file", re.sub(r"^\d+[a-z]?_", "", src.stem) + ".html")
        pages.append((str(out), fm, nb, src))
    if problems: sys.exit("Notebook cells with errors, not publishing:\n" + "\n".join(problems))
    pages.sort(key=lambda p: page_order(p[3].relative_to(proc)))
    nav_items = [(out, fm.get("title", Path(out).stem)) for out, fm, _, _ in pages]
    copy_assets(docs, root)
    exporter = HTMLExporter(template_name="lab", exclude_input_prompt=True, exclude_output_prompt=True)
    for out, fm, nb, src in pages:
        title = fm.get("title", Path(out).stem)
        head = f"# {title}\n\n" + (f'<p class="sane-desc">{fm["description"]}</p>' if "description" in fm else "")
        nb.cells.insert(0, nbformat.v4.new_markdown_cell(head))
        html, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": f"{title} – sane_nb"}})
        depth = "../" * (len(Path(out).parts) - 1)
        nav = ""
        for sec in ("Start", *SECTIONS.values()):
            items = [(o, t) for o, t in nav_items if section(o) == sec]
            if items: nav += f"<h4>{sec}</h4>" + "".join(f'<a href="{depth}{o}"{" class=here" if o == out else ""}>{t}</a>' for o, t in items)
        html = offline_links(html.replace("</head>", _NAV_CSS + _TOC_JS + "</head>", 1), depth)
        html = re.sub(r"(<body[^>]*>)", lambda m: m.group(1) + f'<nav class="sane-nav">{nav}</nav><div id="sane-toc" class="sane-toc"></div>', html, count=1)
        dest = docs/out
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(html, encoding="utf-8")
        if Path(out).stem == "index" and len(Path(out).parts) == 1: write_readme(nb, root/"README.md")
    print(f"{len(pages)} pages -> {docs}")
    return docs

def write_readme(nb, dest):
    "README.md from the processed index notebook (no HTML navigation, plain Markdown)"
    nb = nbformat.from_dict(json.loads(json.dumps(nb)))
    nb.cells[0].source = nb.cells[0].source.replace('<p class="sane-desc">', "> ").replace("</p>", "")
    md, _ = MarkdownExporter().from_notebook_node(nb)
    md = re.sub(r"\n{3,}", "\n\n", md).strip() + "\n"
    dest.write_text(md, encoding="utf-8")

if __name__ == "__main__": build()
