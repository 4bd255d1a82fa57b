"""`dspark export-hub`: a drafter folder made into a Hub repo that works with `trust_remote_code=True` alone.

The folder gets the card, config (with `auto_map`), weights and calibration, and two code files written from this
package: `configuration_dspark.py` as it is, and `modeling_dspark.py` with `hub_routing.py` appended (the small,
exact generate() routing for users who never import dspark_hf). Both import only torch and transformers (and the
modeling file its sibling configuration).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
CODE_FILES = ("configuration_dspark.py", "modeling_dspark.py")
DATA_FILES = ("config.json", "model.safetensors", "calibration.json", "README.md")
AUTO_MAP = {"AutoConfig": "configuration_dspark.DSparkConfig", "AutoModel": "modeling_dspark.DSparkDrafter"}


def modeling_source() -> str:
    """The Hub folder's modeling file: the package's drafter, then its generate() routing (`hub_routing.py`, less
    its docstring, future import and import of the drafter it sits beside), installed on import."""
    routing = (PACKAGE / "hub_routing.py").read_text()
    routing = re.sub(r'\A""".*?"""\n', "", routing, flags=re.S)
    routing = routing.replace("from __future__ import annotations\n", "")
    routing = routing.replace("from .modeling_dspark import DSparkDrafter\n", "")
    banner = "# " + "-" * 5 + " generate() routing for trust_remote_code without dspark_hf (dspark_hf/hub_routing.py) "
    source = (PACKAGE / "modeling_dspark.py").read_text().rstrip() + "\n\n\n" + banner + "\n" + routing.strip()
    return source + "\n\n\ninstall_hub_routing()\n"


def export_hub(source: str | Path, output: str | Path) -> Path:
    """Write the Hub folder for the drafter folder `source` into `output` (the same folder: add the code in place)."""
    source, output = Path(source), Path(output)
    if not (source / "config.json").is_file() or not (source / "model.safetensors").is_file():
        raise ValueError(f"{source} is not a drafter folder: it needs config.json and model.safetensors")
    config = json.loads((source / "config.json").read_text())
    if config.get("model_type") != "dspark":
        raise ValueError(f"{source} holds a {config.get('model_type')!r} model, not a DSpark drafter")
    output.mkdir(parents=True, exist_ok=True)
    if output.resolve() != source.resolve():
        for name in DATA_FILES:
            if (source / name).is_file():
                shutil.copy2(source / name, output / name)
    config["auto_map"] = AUTO_MAP
    (output / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (output / "configuration_dspark.py").write_text((PACKAGE / "configuration_dspark.py").read_text())
    modeling = modeling_source()
    compile(modeling, "modeling_dspark.py", "exec")  # a broken join fails here, not on a user's machine
    (output / "modeling_dspark.py").write_text(modeling)
    return output
