"""The third-party corpus (sdpa_rewrite/scan/corpus.py): libraries that write attention by hand, each built small
with random weights and scanned through the backend (fp32, CPU). Every expressible site is rewritten with eager's
numbers, the true near-misses are reported as such, and docs/COVERAGE.md's third-party table says what a scan says.

segment-anything imports torchvision for image helpers its attention never calls; the registry's torchvision does
not load beside the CPU torch, so its factory imports it behind corpus.without_torchvision, a stand-in module.
"""
from __future__ import annotations

import functools
import os

import pytest
import torch

from sdpa_rewrite.cli import main
from sdpa_rewrite.scan import corpus, summary, thirdparty
from sdpa_rewrite.scan.run import scan_model

COVERAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "COVERAGE.md")
NEAR_MISS = "(near-miss)"          # an entry's model description says so: its sites must stay eager


@functools.lru_cache(maxsize=None)
def scanned(name: str):
    return scan_model(corpus.factory(corpus.BY_NAME[name]))


@pytest.mark.parametrize("name", [e.name for e in corpus.ENTRIES])
def test_corpus_entry_rewritten_with_eager_numbers(name):
    entry, result = corpus.BY_NAME[name], scanned(name)
    assert result.status in summary.TOLERATED, summary.verdict(result)
    assert result.sites > 0 and result.max_rel_err is not None and result.max_rel_err <= 1e-5, summary.verdict(result)
    assert not summary.expressible_misses(result), summary.verdict(result)
    if NEAR_MISS in entry.model:
        assert result.rewritten == 0 and len(result.skipped) == result.sites, summary.verdict(result)
    else:           # every site rewritten but the inexpressible ones (nystrom's landmark kernel, inverted)
        assert result.rewritten == result.sites - len(result.skipped) > 0, summary.verdict(result)


def test_corpus_spans_the_fields():
    assert len(corpus.libraries()) >= 12
    fields = {e.field for e in corpus.ENTRIES}
    for needed in ("LLM research", "segmentation", "CLIP-style towers", "speech recognition", "audio generation",
                   "protein", "diffusion", "research (single author)"):
        assert needed in fields, needed
    assert all(e.version() != "not installed" for e in corpus.ENTRIES), "pip install -e '.[test]'"


def test_near_misses_say_why():
    """Heads mixed before the softmax and weights returned to the caller are reported in those words."""
    talking = scanned("x-transformers/talking-heads")
    assert all("mixes the scores across heads" in r for r in talking.skipped), talking.skipped
    contacts = scanned("fair-esm/esm2-contacts")
    assert all("used outside the ·V product" in r for r in contacts.skipped), contacts.skipped


def test_coverage_table_matches_a_scan():
    """docs/COVERAGE.md's third-party rows (`sdpa-rewrite scan --corpus --coverage docs/COVERAGE.md`) are what the
    corpus scans to now, row for row."""
    with open(COVERAGE) as f:
        table = thirdparty.parse(f.read())
    assert len(table) == len(corpus.ENTRIES), sorted(table)
    for entry in corpus.ENTRIES:
        row, result = table[(entry.dist, entry.model)], scanned(entry.name)
        assert row == {"status": result.status, "sites": result.sites, "rewritten": result.rewritten}, entry.name
    results = [scanned(e.name) for e in corpus.ENTRIES]
    near_misses = sum(len(r.skipped) - len(summary.expressible_misses(r)) for r in results)
    expressible = sum(r.sites for r in results) - near_misses
    assert sum(r["rewritten"] for r in table.values()) >= 0.95 * expressible


@pytest.fixture
def dynamo_logs_restored():
    """The scan command quiets Dynamo's log for the process; later tests read its graph-break warnings."""
    yield
    torch._logging.set_logs()


def test_cli_corpus_rewrites_its_block_only(tmp_path, monkeypatch, dynamo_logs_restored):
    """`scan --corpus --coverage` replaces the third-party block and keeps the transformers part; a transformers
    run keeps the block."""
    page = tmp_path / "COVERAGE.md"
    page.write_text("# Coverage\n\nintro\n\n## transformers architectures\n\nrows of transformers\n")
    monkeypatch.setattr(corpus, "ENTRIES", tuple(e for e in corpus.ENTRIES if e.name == "perceiver-pytorch"))
    assert main(["scan", "--corpus", "--coverage", str(page)]) == 0
    text = page.read_text()
    assert "rows of transformers" in text and thirdparty.parse(text)[("perceiver-pytorch", "Perceiver")] == {
        "status": "ok", "sites": 4, "rewritten": 4}
    assert main(["scan", "gpt2", "--coverage", str(page)]) == 0
    text = page.read_text()
    assert "rows of transformers" not in text and ("perceiver-pytorch", "Perceiver") in thirdparty.parse(text)
