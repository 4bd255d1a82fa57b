"""dspark-hf: DSpark speculative decoding as a Hugging Face Transformers plugin.

Importing this package registers the `dspark` model type with the Auto classes and routes
`generate(..., assistant_model=<DSparkDrafter>)` to the DSpark candidate generator.
"""

from transformers import AutoConfig, AutoModel

from .configuration_dspark import DSparkConfig
from .cpu_linears import onednn_linears
from .drafters import DEFAULT_DRAFTER, load_drafter
from .gating import ConfidenceThreshold, FixedLength, GatingPolicy, make_gating
from .generation import DSparkCandidateGenerator, DSparkStats
from .modeling_dspark import DSparkDrafter
from .scheduler import CostProfile, PrefixScheduler, load_profile, schedule_batch
from .targets import DEFAULT_TARGET, load_target

__version__ = "0.1.0"

AutoConfig.register("dspark", DSparkConfig, exist_ok=True)
AutoModel.register(DSparkConfig, DSparkDrafter, exist_ok=True)

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
    "load_drafter",
    "load_profile",
    "load_target",
    "make_gating",
    "onednn_linears",
    "schedule_batch",
]
