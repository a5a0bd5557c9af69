"""`sdpa-rewrite scan`: build transformers architectures tiny and offline (configs, inputs), run each
through the backend and compare with eager (run), and summarise what was rewritten (summary, coverage)."""
from .configs import build, tiny_config
from .inputs import dummy_inputs
from .run import STATUSES, ScanResult, scan_model

__all__ = ["STATUSES", "ScanResult", "build", "dummy_inputs", "scan_model", "tiny_config"]
