"""sdpa_rewrite: rewrite hand-written eager attention in torch.fx graphs to scaled_dot_product_attention.

    torch.compile(model, backend="sdpa_rewrite")     # rewrite, then Inductor
    report = sdpa_rewrite.rewrite(gm)                # any traced GraphModule, in place
    program = sdpa_rewrite.rewrite(ep)               # an ExportedProgram in, an ExportedProgram out
    sdpa_rewrite.export_onnx(ep, path="m.onnx")      # ONNX with one Attention node per rewritten site
    sdpa_rewrite.explain(model, *args)               # which sites match, which don't, and why
    with sdpa_rewrite.collect_reports() as reports:  # the backend's reports, where `options` cannot be passed
"""
from .backend import register as _register
from .backend import collect_reports, sdpa_rewrite_backend
from .explain import explain
from .exported import report_of
from .find import Attention, Miss, find
from .report import Report, Site
from .rewrite import rewrite
from .to_onnx import export_onnx

__all__ = ["rewrite", "explain", "find", "Report", "Site", "Attention", "Miss", "sdpa_rewrite_backend",
           "collect_reports", "report_of", "export_onnx"]
__version__ = "0.1.0"

_register()
