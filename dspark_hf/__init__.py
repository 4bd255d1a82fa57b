"""dspark-hf: DSpark speculative decoding as a Hugging Face Transformers plugin.

Importing this package registers the `dspark` model type with the Auto classes and routes
`generate(..., assistant_model=<DSparkDrafter>)` to DSpark's rounds (`decoding/routing.py`).
"""

from transformers import AutoConfig, AutoModel

from .configuration_dspark import DSparkConfig
from .decoding.candidates import DSparkCandidateGenerator
from .decoding.policies import ConfidenceThreshold, FixedLength, GatingPolicy, PrefixScheduler, schedule_batch
from .decoding.profile import CostProfile, load_profile
from .decoding.round import DSparkStats
from .decoding.routing import install_generate_routing, make_gating
from .drafters import DEFAULT_DRAFTER, load_drafter
from .kernels.cpu_linears import onednn_linears
from .modeling_dspark import DSparkDrafter
from .notices import capture_count, fallback_counts
from .targets import DEFAULT_TARGET, load_target

__version__ = "0.1.0"

AutoConfig.register("dspark", DSparkConfig, exist_ok=True)
AutoModel.register(DSparkConfig, DSparkDrafter, exist_ok=True)
install_generate_routing()

__all__ = [
    "DEFAULT_DRAFTER",
    "DEFAULT_TARGET",
    "ConfidenceThreshold",
    "CostProfile",
    "DSparkCandidateGenerator",
    "DSparkConfig",
    "DSparkDrafter",
    "DSparkStats",
    "FixedLength",
    "GatingPolicy",
    "PrefixScheduler",
    "capture_count",
    "fallback_counts",
    "load_drafter",
    "load_profile",
    "load_target",
    "make_gating",
    "onednn_linears",
    "schedule_batch",
]
