"""The docs a clone holds point at what a clone holds: every relative link of README.md, docs/ and bench/'s pages
resolves to a file of the repository, and every `#anchor` to a heading of that file."""
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "bench").glob("*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
FENCED = re.compile(r"```.*?```", re.S)
CODE = re.compile(r"```.*?```|`[^`\n]*`", re.S)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped (hyphens and underscores kept), spaces to
    hyphens."""
    text = re.sub(r"`|\*\*|\*", "", heading.strip().lower())
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: pathlib.Path) -> set:
    seen, out = {}, set()
    for line in FENCED.sub("", page.read_text()).splitlines():
        if line.startswith("#"):
            base = slug(line.lstrip("#"))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(page: pathlib.Path) -> list:
    return [t for t in LINK.findall(CODE.sub("", page.read_text()))
            if not re.match(r"[a-z]+:", t)]


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_relative_links_resolve(page):
    broken = []
    for target in links(page):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists() or ROOT not in dest.parents and dest != ROOT:
            broken.append(f"{target}: no such file in the repository")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.relative_to(ROOT)}")
    assert not broken, "\n".join(broken)


def test_slug_follows_github():
    assert slug("Decoding under CUDA graphs, H100 (2026-12-07)") == "decoding-under-cuda-graphs-h100-2026-12-07"
    assert slug("`generate()` on an H200") == "generate-on-an-h200"


def test_readme_snippet_prints_what_the_readme_says(capsys):
    """README's "On your own model" runs as written and prints the README's table (the pass's time aside) and an
    error within fp32 rounding of the figure shown."""
    pytest.importorskip("transformers")
    text = (ROOT / "README.md").read_text()
    section = text.split("## On your own model", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    shown = re.search(r"prints \(.*?\):\n\n```\n(.*?)```", section, re.S).group(1)
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out

    def rows(out):            # the table without its `reason` column (empty here, trimmed in the README)
        lines = [re.sub(r"\(\d+ ms\)", "(ms)", line) for line in out.splitlines()]
        header = next(line for line in lines if line.startswith("site "))
        cut = header.index(" reason") if header.rstrip().endswith("reason") else None
        return [line[:cut].rstrip() if line.startswith(("site ", "---", "transformer.")) else line.rstrip()
                for line in lines if line and not line.startswith("max abs")]

    assert rows(printed) == rows(shown)
    got = float(re.search(r"max abs difference from eager: (\S+)", printed).group(1))
    want = float(re.search(r"max abs difference from eager: (\S+)", shown).group(1))
    assert got <= max(4 * want, 1e-6), (got, want)


def test_every_python_block_runs_or_says_it_is_an_excerpt():
    """A reader can tell a block that runs as written from a fragment: every ```python block of README.md and docs/
    is either README's "On your own model" (run above) or starts with an `# excerpt:` line saying where its objects
    come from."""
    unmarked = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = page.read_text()
        for m in re.finditer(r"```python\n(.*?)```", text, re.S):
            body = m.group(1)
            headings = re.findall(r"^## (.*)$", text[:m.start()], re.M)
            run_above = page.name == "README.md" and headings and headings[-1] == "On your own model"
            runs = run_above or body.startswith(("# excerpt:", RUNS))
            if not runs:
                line = text[:m.start()].count("\n") + 1
                unmarked.append(f"{page.relative_to(ROOT)}:{line}: {body.splitlines()[0][:60]}")
    assert not unmarked, "\n".join(unmarked)


RUNS = "# runs as written"
SCI = re.compile(r"\d+(?:\.\d+)?e-\d+")


def runnable_blocks() -> list:
    """(page, line, code, what it prints) for each docs/ block that starts with `# runs as written`; the printed
    output is the plain block that follows "prints"."""
    out = []
    for page in sorted((ROOT / "docs").glob("*.md")):
        text = page.read_text()
        for m in re.finditer(r"```python\n(" + re.escape(RUNS) + r".*?)```\n\nprints[^\n]*:\n\n```\n(.*?)```", text, re.S):
            out.append((page.name, text[:m.start()].count("\n") + 1, m.group(1), m.group(2)))
    return out


@pytest.mark.parametrize("block", runnable_blocks(), ids=lambda b: f"{b[0]}:{b[1]}")
def test_docs_blocks_that_say_they_run_print_what_the_page_shows(block, tmp_path, monkeypatch, capsys):
    """The block runs as written (in an empty folder) and prints the page's lines; an error figure may differ by
    fp32 rounding (at most 4x the one shown, or 1e-6)."""
    pytest.importorskip("transformers")
    page, line, code, shown = block
    if "export_onnx" in code:
        pytest.importorskip("onnxscript")
        pytest.importorskip("onnxruntime")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"{page}:{line}", "exec"), {})
    printed = [ln.rstrip() for ln in capsys.readouterr().out.splitlines() if ln.strip()]
    want = [ln.rstrip() for ln in shown.splitlines() if ln.strip()]
    assert [SCI.sub("<e>", ln) for ln in printed] == [SCI.sub("<e>", ln) for ln in want]
    for got_line, want_line in zip(printed, want):
        for got, wanted in zip(SCI.findall(got_line), SCI.findall(want_line)):
            assert float(got) <= max(4 * float(wanted), 1e-6), (got_line, want_line)
